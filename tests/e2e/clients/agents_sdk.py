"""The OpenAI Agents SDK against the gateway: an agent with one function tool, run to its end.
Runs in its own process, off the gateway's path (the SDK needs the PyPI `requests`). Prints JSON."""

import json
import sys

from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

base_url, model = sys.argv[1:3]
set_tracing_disabled(True)  # traces would go to OpenAI's servers


@function_tool
def get_weather(city: str) -> str:
    """The weather of a city."""
    return f"Sunny in {city}"


agent = Agent(name="weather", instructions="Answer with the tool.", tools=[get_weather],
              model=OpenAIResponsesModel(model=model, openai_client=AsyncOpenAI(base_url=base_url, api_key="unused")))
result = Runner.run_sync(agent, "What is the weather in Paris?")
print(json.dumps({"final": result.final_output,
                  "items": [item.type for item in result.new_items]}))
