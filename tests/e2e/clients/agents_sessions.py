"""The OpenAI Agents SDK's server-side sessions against the gateway: a tool-using agent run for two
turns on an OpenAIConversationsSession, then on an OpenAIResponsesCompactionSession over a local
SQLite session. Runs in its own process, like agents_sdk.py. Prints JSON."""

import asyncio
import json
import sys

from agents import Agent, OpenAIResponsesModel, Runner, SQLiteSession, function_tool, set_tracing_disabled
from agents.memory import OpenAIConversationsSession, OpenAIResponsesCompactionSession
from openai import AsyncOpenAI

base_url, model = sys.argv[1:3]
set_tracing_disabled(True)  # traces would go to OpenAI's servers
client = AsyncOpenAI(base_url=base_url, api_key="unused")


@function_tool
def get_weather(city: str) -> str:
    """The weather of a city."""
    return f"Sunny in {city}"


agent = Agent(name="weather", instructions="Answer with the tool.", tools=[get_weather],
              model=OpenAIResponsesModel(model=model, openai_client=client))


async def main() -> dict:
    conversation = OpenAIConversationsSession(openai_client=client)
    first = await Runner.run(agent, "What is the weather in Paris?", session=conversation)
    second = await Runner.run(agent, "And in Rome?", session=conversation)
    stored = await conversation.get_items()
    listed = await client.conversations.items.list(conversation.session_id, order="asc")

    compacting = OpenAIResponsesCompactionSession(
        "trip", SQLiteSession("trip"), client=client, model=model,
        should_trigger_compaction=lambda context: len(context["compaction_candidate_items"]) >= 3)
    turns = [await Runner.run(agent, question, session=compacting)
             for question in ("What is the weather in Paris?", "And in Rome?")]
    kept = await compacting.get_items()
    return {"conversation": {"finals": [first.final_output, second.final_output],
                             "id": conversation.session_id,
                             "stored": [item.get("type") for item in stored],
                             "listed": [item.type for item in listed.data]},
            "compaction": {"finals": [turn.final_output for turn in turns],
                           "kept": [item.get("type") or item.get("role") for item in kept]}}


print(json.dumps(asyncio.run(main())))
