// The Vercel AI SDK's OpenAI Responses provider against the gateway: a tool round trip with
// generateText, and streamText asking for a reasoning summary. Prints one JSON line.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, tool, stepCountIs } from "ai";
import { z } from "zod";

const [baseURL, model] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey: "unused" });
const withTool = await generateText({
  model: openai.responses(model),
  prompt: "What is the weather in Paris?",
  tools: { get_weather: tool({ description: "The weather of a city.", inputSchema: z.object({ city: z.string() }),
                               execute: async ({ city }) => `Sunny in ${city}` }) },
  stopWhen: stepCountIs(3),
});
const streamed = streamText({
  model: openai.responses(model),
  prompt: "[think] Say hello.",
  providerOptions: { openai: { reasoningSummary: "auto" } },
});
let text = "";
for await (const part of streamed.textStream) text += part;
console.log(JSON.stringify({ toolText: withTool.text, steps: withTool.steps.length,
                             toolResults: withTool.steps.flatMap((s) => s.toolResults.map((r) => r.output)),
                             text, reasoning: await streamed.reasoningText }));
