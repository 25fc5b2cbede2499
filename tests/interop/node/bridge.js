#!/usr/bin/env node
// A matrix-appservice-bridge application service driven by the interop suite
// (tests/interop/test_appservice_bridge_js.py, through tests/interop/nodebridge.py).
//
// Owns: one `Bridge` from matrix-appservice-bridge, built from the registration file the
// test wrote, listening for transactions on loopback, and a line protocol with the test:
//   stdin:  one JSON object per line: {"id": N, "op": "...", ...arguments}
//   stdout: lines starting with "IEUM-IPC " followed by one JSON object:
//     {"ready": {...}}                  once the appservice listens
//     {"id": N, "ok": true, "result": X} / {"id": N, "ok": false, "error": {...}}
//     {"event": {...}}                  each event the Bridge's onEvent handler receives
//     {"ephemeral": {...}}              each event its onEphemeralEvent handler receives
//     {"txn": {...}}                    each transaction request (id, event ids, keys, auth)
// Every other output (the framework's own logging) is not part of the protocol.
// The bridge exits when stdin closes (the test ended or died) or on {"op": "stop"}.
//
// Usage: node bridge.js REGISTRATION.yaml HOMESERVER_URL DOMAIN PORT
// (modules resolve through NODE_PATH: tests/interop/run installs them outside the clone)
"use strict";

const readline = require("readline");
const { Bridge, AppServiceRegistration } = require("matrix-appservice-bridge");
const { AppService } = require("matrix-appservice");

const PREFIX = "IEUM-IPC ";
const [registrationPath, homeserverUrl, domain, portText] = process.argv.slice(2);
if (!registrationPath || !homeserverUrl || !domain || !portText) {
    process.stderr.write("usage: node bridge.js REGISTRATION.yaml HOMESERVER_URL DOMAIN PORT\n");
    process.exit(2);
}

function emit(message) {
    process.stdout.write(PREFIX + JSON.stringify(message) + "\n");
}

// What an error looks like to the test: the homeserver's answer when there was one.
function describe(err) {
    if (!err || typeof err !== "object") return { message: String(err) };
    const out = { message: err.message || String(err), name: err.name };
    if (err.statusCode !== undefined) out.status = err.statusCode;
    if (err.errcode !== undefined) out.errcode = err.errcode;
    if (err.body !== undefined) out.body = err.body;
    return out;
}

// The framework's AppService (matrix-appservice), subclassed only to report each
// transaction request as it arrives; handling stays the framework's.
class ObservedAppService extends AppService {
    onTransaction(req, res) {
        const body = req.body || {};
        const auth = req.headers.authorization || "";
        emit({ txn: {
            txn_id: req.params.txnId,
            path: req.path,
            method: req.method,
            auth_header_ok: auth === `Bearer ${this.config.homeserverToken}`,
            access_token_query: req.query.access_token !== undefined,
            event_ids: (body.events || []).map((ev) => ev.event_id),
            keys: Object.keys(body).sort(),
            ephemeral_types: (body.ephemeral || []).map((ev) => ev.type),
            unstable_ephemeral_types: (body["de.sorunome.msc2409.ephemeral"] || []).map((ev) => ev.type),
        } });
        return super.onTransaction(req, res);
    }
}

const bridge = new Bridge({
    registration: registrationPath,
    homeserverUrl,
    domain,
    disableStores: true,     // no nedb: this bridge keeps no state
    disableContext: true,
    suppressEcho: false,     // report the ghosts' own events too
    logRequestOutcome: false,
    controller: {
        onEvent: (request) => {
            emit({ event: request.getData() });
        },
        onEphemeralEvent: (request) => {
            emit({ ephemeral: request.getData() });
        },
        onLog: (text, isError) => process.stderr.write(`[bridge${isError ? " error" : ""}] ${text}\n`),
    },
});

const ops = {
    // The bot (sender_localpart) through the framework's bot intent.
    async botWhoami() {
        return bridge.getIntent().matrixClient.getWhoAmI();
    },
    async ensureRegistered({ user }) {
        return (await bridge.getIntent(user).ensureRegistered()) || null;
    },
    async whoami({ user }) {
        return bridge.getIntent(user).matrixClient.getWhoAmI();
    },
    async setDisplayName({ user, name }) {
        await bridge.getIntent(user).setDisplayName(name);
        return null;
    },
    async join({ user, room }) {
        return bridge.getIntent(user).join(room);
    },
    async sendText({ user, room, text }) {
        return (await bridge.getIntent(user).sendText(room, text)).event_id;
    },
    // Timestamp massaging: the framework's Intent has no `ts` parameter, so this is a raw
    // request through the framework's client for this ghost (which adds ?user_id=).
    async sendMassaged({ user, room, text, ts, txn }) {
        const client = bridge.getIntent(user).matrixClient;
        const path = `/_matrix/client/v3/rooms/${encodeURIComponent(room)}/send/m.room.message/` +
            encodeURIComponent(txn);
        const resp = await client.doRequest("PUT", path, { ts }, { msgtype: "m.text", body: text });
        return resp.event_id;
    },
    async createAlias({ user, alias, room }) {
        await bridge.getIntent(user).createAlias(alias, room);
        return null;
    },
    async stop() {
        setImmediate(shutdown);
        return null;
    },
};

let closing = false;
async function shutdown() {
    if (closing) return;
    closing = true;
    try {
        await bridge.close();
    } catch (err) {
        process.stderr.write(`bridge.close: ${err}\n`);
    }
    process.exit(0);
}

async function handle(line) {
    let msg;
    try {
        msg = JSON.parse(line);
    } catch (err) {
        emit({ id: null, ok: false, error: { message: `not JSON: ${line.slice(0, 200)}` } });
        return;
    }
    const op = ops[msg.op];
    if (!op) {
        emit({ id: msg.id, ok: false, error: { message: `unknown op ${msg.op}` } });
        return;
    }
    try {
        const result = await op(msg);
        emit({ id: msg.id, ok: true, result: result === undefined ? null : result });
    } catch (err) {
        emit({ id: msg.id, ok: false, error: describe(err) });
    }
}

async function main() {
    const port = Number(portText);
    await bridge.run(port, new ObservedAppService({ homeserverToken: readHsToken() }), "127.0.0.1");
    const registration = bridge.getBot().getUserId ? bridge.getBot().getUserId() : null;
    emit({ ready: { port, bot: registration, framework: require("matrix-appservice-bridge/package.json").version } });
    const rl = readline.createInterface({ input: process.stdin });
    rl.on("line", (line) => { if (line.trim()) handle(line); });
    rl.on("close", shutdown);
}

function readHsToken() {
    const yaml = require("js-yaml");
    const fs = require("fs");
    const reg = AppServiceRegistration.fromObject(yaml.load(fs.readFileSync(registrationPath, "utf8")));
    return reg.getHomeserverToken();
}

process.on("unhandledRejection", (err) => process.stderr.write(`unhandled rejection: ${err && err.stack || err}\n`));
main().catch((err) => {
    emit({ fatal: describe(err) });
    process.stderr.write(`bridge failed to start: ${err && err.stack || err}\n`);
    process.exit(1);
});
