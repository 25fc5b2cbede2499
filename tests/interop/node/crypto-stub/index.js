// Stub of @matrix-org/matrix-sdk-crypto-nodejs (see package.json): matrix-bot-sdk requires it
// at load time but uses it only when encryption is enabled, which the interop bridge never does.
// Any use fails loudly instead of silently doing nothing.
"use strict";
const unavailable = (name) => {
    throw new Error(`@matrix-org/matrix-sdk-crypto-nodejs is stubbed in the interop suite (${name} used)`);
};
module.exports = new Proxy({}, {
    get(_target, name) {
        if (typeof name !== "string" || name === "__esModule" || name === "then") return undefined;
        return new Proxy(function stub() {}, {
            construct: () => unavailable(name),
            apply: () => unavailable(name),
            get: (_t, member) => (typeof member === "string" ? () => unavailable(`${name}.${member}`) : undefined),
        });
    },
});
