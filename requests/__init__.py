"""Wire formats of NOMYO Router and their translation.

Pure code: no I/O and no imports of the application. This package is named
``requests`` and so shadows the PyPI library of that name inside the gateway's
process; nothing the gateway imports may rely on that library.
"""
