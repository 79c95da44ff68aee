// The OpenAI Node SDK against the gateway: a plain response, then a streamed one through the
// SDK's stream helper. Prints one JSON line with what came back.
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const plain = await client.responses.create({ model, input: "Say hello." });
const stream = client.responses.stream({ model, input: "Say hello again.", store: false });
let deltas = "";
for await (const event of stream) {
  if (event.type === "response.output_text.delta") deltas += event.delta;
}
const final = await stream.finalResponse();
const again = await client.responses.retrieve(plain.id);
console.log(JSON.stringify({ plain: plain.output_text, deltas, final: final.output_text, status: final.status,
                             retrieved: again.output_text }));
