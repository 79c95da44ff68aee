"""The OpenAI Agents SDK's HostedMCPTool against the gateway: an agent whose MCP server needs approval for
every call, approved by an on_approval_request callback. Runs in its own process, like agents_sdk.py."""

import json
import sys

from agents import Agent, HostedMCPTool, OpenAIResponsesModel, Runner, set_tracing_disabled
from openai import AsyncOpenAI

base_url, model, server_url = sys.argv[1:4]
set_tracing_disabled(True)  # traces would go to OpenAI's servers
asked = []


def approve(request):
    asked.append(request.data.name)
    return {"approve": True}


tool = HostedMCPTool(tool_config={"type": "mcp", "server_label": "demo", "server_url": server_url,
                                  "allowed_tools": ["weather"], "require_approval": "always"},
                     on_approval_request=approve)
agent = Agent(name="weather", instructions="Answer with the tool.", tools=[tool],
              model=OpenAIResponsesModel(model=model, openai_client=AsyncOpenAI(base_url=base_url, api_key="unused")))
result = Runner.run_sync(agent, "What is the weather in Paris?")
print(json.dumps({"final": result.final_output, "asked": asked,
                  "items": [item.type for item in result.new_items]}))
