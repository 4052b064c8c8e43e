// A Node.js client for mmrouter, built from the .proto alone.
//
//   npm ci   (the versions of package-lock.json)
//   node client.js [address] [prompt]
//
// Calls Generate, then StreamGenerate, and prints one JSON line per result so
// the output is easy to read by people and by tests.
//
// Like the mmrouter CLI, it reads from the environment:
//   MMROUTER_TOKEN     the daemon's server.auth_token, sent as "authorization: Bearer <token>"
//   MMROUTER_TLS_CA    the CA file to trust: connect with TLS (else plaintext)
//   MMROUTER_TLS_CERT  with MMROUTER_TLS_KEY: a client certificate and its key (mutual TLS)
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'mmrouter', 'v1', 'router.proto');

function loadService() {
  const definition = protoLoader.loadSync(PROTO, {
    keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).mmrouter.v1.RouterService;
}

// The google.rpc types of an error's details (google/rpc/status.proto and error_details.proto, the
// fields this client reads): the daemon sends a google.rpc.Status in the trailer
// "grpc-status-details-bin", whose details are Any messages.
const RPC_TYPES = protobuf.Root.fromJSON({ nested: { google: { nested: {
  protobuf: { nested: {
    Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
    Duration: { fields: { seconds: { type: 'int64', id: 1 }, nanos: { type: 'int32', id: 2 } } },
  } },
  rpc: { nested: {
    Status: { fields: { code: { type: 'int32', id: 1 }, message: { type: 'string', id: 2 },
                        details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 } } },
    ErrorInfo: { fields: { reason: { type: 'string', id: 1 }, domain: { type: 'string', id: 2 },
                           metadata: { keyType: 'string', type: 'string', id: 3 } } },
    RetryInfo: { fields: { retry_delay: { type: 'google.protobuf.Duration', id: 1 } } },
    BadRequest: { nested: { FieldViolation: { fields: { field: { type: 'string', id: 1 },
                                                        description: { type: 'string', id: 2 } } } },
                  fields: { field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 } } },
  } },
} } } });

// The details of a failed call: { reason, metadata, retryAfterSeconds, violations } (empty when the
// transport refused it before the daemon saw it, which sends no details).
function errorDetails(err) {
  const found = { reason: '', metadata: {}, retryAfterSeconds: null, violations: [] };
  const [raw] = (err.metadata && err.metadata.get('grpc-status-details-bin')) || [];
  if (!raw) return found;
  const status = RPC_TYPES.lookupType('google.rpc.Status').decode(raw);
  for (const any of status.details) {
    const name = any.type_url.split('/').pop();
    const type = RPC_TYPES.lookupType(name);
    const detail = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
    if (name === 'google.rpc.ErrorInfo') {
      found.reason = detail.reason;
      found.metadata = detail.metadata;
    } else if (name === 'google.rpc.RetryInfo') {
      const delay = detail.retry_delay || { seconds: 0, nanos: 0 };
      found.retryAfterSeconds = delay.seconds + delay.nanos / 1e9;
    } else if (name === 'google.rpc.BadRequest') {
      found.violations = detail.field_violations;  // field paths use the proto's names: media_id, not mediaId
    }
  }
  return found;
}

// The contents of the file named by the environment variable `name`, or null when it is unset.
function readFileFrom(name) {
  const file = process.env[name];
  if (!file) return null;
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`${name}: cannot read ${file}: ${err.message}`);
  }
}

// Plaintext, or TLS when MMROUTER_TLS_CA is set (with a client certificate for mutual TLS).
function channelCredentials() {
  const ca = readFileFrom('MMROUTER_TLS_CA');
  const cert = readFileFrom('MMROUTER_TLS_CERT');
  const key = readFileFrom('MMROUTER_TLS_KEY');
  if (!cert !== !key) throw new Error('MMROUTER_TLS_CERT and MMROUTER_TLS_KEY go together');
  if (!ca) {
    if (cert) throw new Error('MMROUTER_TLS_CERT needs MMROUTER_TLS_CA (the CA of the daemon\'s certificate)');
    return grpc.credentials.createInsecure();
  }
  return grpc.credentials.createSsl(ca, key, cert);
}

// The metadata sent with every call: the bearer token, if there is one. Surrounding whitespace
// (the newline a secret file ends with) is not part of it, as for the daemon.
function callMetadata() {
  const metadata = new grpc.Metadata();
  const token = (process.env.MMROUTER_TOKEN || '').trim();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

function userRequest(prompt) {
  return {
    request: {
      messages: [{ role: 'ROLE_USER', parts: [{ text: prompt }] }],
      options: { task: 'TASK_CHAT' },
    },
  };
}

function generate(client, metadata, prompt) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30000);
    client.Generate(userRequest(prompt), metadata, { deadline }, (err, response) => {
      if (err) reject(err); else resolve(response.answer);
    });
  });
}

function streamGenerate(client, metadata, prompt) {
  return new Promise((resolve, reject) => {
    const events = [];
    const call = client.StreamGenerate(userRequest(prompt), metadata, { deadline: new Date(Date.now() + 30000) });
    call.on('data', (event) => events.push(event));
    call.on('error', reject);
    call.on('end', () => resolve(events));
  });
}

async function main() {
  const address = process.argv[2] || '127.0.0.1:50051';
  const prompt = process.argv[3] || 'Hello from Node.js';
  const RouterService = loadService();
  const client = new RouterService(address, channelCredentials());
  const metadata = callMetadata();

  const answer = await generate(client, metadata, prompt);
  console.log(JSON.stringify({ call: 'Generate', text: answer.text, route: answer.route, usage: answer.usage }));

  const events = await streamGenerate(client, metadata, prompt);
  const kinds = events.map((e) => e.event);
  const text = events.filter((e) => e.event === 'text_delta').map((e) => e.text_delta.text).join('');
  const done = events.find((e) => e.event === 'done');
  console.log(JSON.stringify({ call: 'StreamGenerate', kinds, text, route: done && done.done.answer.route }));
  client.close();
}

main().catch((err) => {
  if (typeof err.code !== 'number') {  // not a gRPC status: a bad option, say
    console.error(`error: ${err.message}`);
  } else {
    const code = Object.keys(grpc.status).find((name) => grpc.status[name] === err.code) || err.code;
    console.error(`error: ${code} ${err.details || err.message}`);
    const details = errorDetails(err);
    if (details.reason) {
      const retry = details.retryAfterSeconds === null ? '' : ` retry_after_seconds=${details.retryAfterSeconds}`;
      console.error(`reason=${details.reason} request_id=${details.metadata.request_id || ''}${retry}`);
    }
    for (const v of details.violations) console.error(`  ${v.field}: ${v.description}`);
    if (err.code === grpc.status.UNAUTHENTICATED) {
      console.error('hint: set MMROUTER_TOKEN to the daemon\'s server.auth_token');
    }
  }
  process.exit(1);
});
