// A Node.js client for mmrouter, built from the .proto alone.
//
//   npm install
//   node client.js [address] [prompt]
//
// Calls Generate, then StreamGenerate, and prints one JSON line per result so
// the output is easy to read by people and by tests.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'mmrouter', 'v1', 'router.proto');

function loadService() {
  const definition = protoLoader.loadSync(PROTO, {
    keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).mmrouter.v1.RouterService;
}

function userRequest(prompt) {
  return {
    request: {
      messages: [{ role: 'ROLE_USER', parts: [{ text: prompt }] }],
      options: { task: 'TASK_CHAT' },
    },
  };
}

function generate(client, prompt) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30000);
    client.Generate(userRequest(prompt), { deadline }, (err, response) => {
      if (err) reject(err); else resolve(response.answer);
    });
  });
}

function streamGenerate(client, prompt) {
  return new Promise((resolve, reject) => {
    const events = [];
    const call = client.StreamGenerate(userRequest(prompt), { deadline: new Date(Date.now() + 30000) });
    call.on('data', (event) => events.push(event));
    call.on('error', reject);
    call.on('end', () => resolve(events));
  });
}

async function main() {
  const address = process.argv[2] || '127.0.0.1:50051';
  const prompt = process.argv[3] || 'Hello from Node.js';
  const RouterService = loadService();
  const client = new RouterService(address, grpc.credentials.createInsecure());

  const answer = await generate(client, prompt);
  console.log(JSON.stringify({ call: 'Generate', text: answer.text, route: answer.route, usage: answer.usage }));

  const events = await streamGenerate(client, prompt);
  const kinds = events.map((e) => e.event);
  const text = events.filter((e) => e.event === 'text_delta').map((e) => e.text_delta.text).join('');
  const done = events.find((e) => e.event === 'done');
  console.log(JSON.stringify({ call: 'StreamGenerate', kinds, text, route: done && done.done.answer.route }));
  client.close();
}

main().catch((err) => {
  console.error(`error: ${err.code} ${err.details || err.message}`);
  process.exit(1);
});
