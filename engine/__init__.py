"""The turn engine: a turn's preparation, its upstream call, the runner that ends it, background jobs,
and the gateway's process state. Nothing here speaks HTTP."""
