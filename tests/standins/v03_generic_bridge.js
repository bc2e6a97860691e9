#!/usr/bin/env node
// Stand-in for Snakepit v0.3.0's priv/javascript/generic_bridge.js (behaviour, not its code).
//
// - JSON only, `--mode pool-worker`; no protocol negotiation. A negotiation frame is taken for
//   a request without a command: it is answered with an error frame and, since the request had
//   no id, JSON.stringify leaves `id` out of the answer altogether.
// - A handler result with `status: "error"` is turned into `success: false` (the Python v0.3
//   bridges pass it through as a success instead).
// - An unknown command is an error response: "Unknown command: <name>".
// - A frame that is not valid JSON ends the read loop: no reply to it, nor to anything after
//   it; the process lingers until stdin ends.
// - Exits 0 on stdin end and on SIGTERM.
//
// Test hooks (not in v0.3): STANDIN_RECORD names a file that gets one JSON line per frame
// received; the command `unparseable` is handled like a frame that failed to parse; `sleep`
// (blocking, as every v0.3 handler is) and `whoami` help the tests.
"use strict";

const fs = require("fs");

function log(message) {
    try {
        process.stderr.write(message + "\n");
    } catch (_) {
        // stderr closed
    }
}

function record(fields) {
    const path = process.env.STANDIN_RECORD;
    if (path) {
        fs.appendFileSync(path, JSON.stringify(fields) + "\n");
    }
}

function blockFor(seconds) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, seconds * 1000);
}

class GenericHandler {
    constructor() {
        this.startTime = Date.now();
        this.requestCount = 0;
        this.commands = {
            ping: (args) => ({
                status: "ok",
                bridge_type: "generic_javascript",
                uptime: (Date.now() - this.startTime) / 1000,
                requests_handled: this.requestCount,
                timestamp: Date.now() / 1000,
                node_version: process.version,
                worker_id: args.worker_id || "unknown",
                echo: args,
            }),
            echo: (args) => ({ status: "ok", echoed: args, timestamp: Date.now() / 1000 }),
            compute: (args) => this.compute(args),
            random: (args) => this.random(args),
            info: () => ({
                status: "ok",
                bridge_info: {
                    name: "Generic Snakepit JavaScript Bridge",
                    version: "1.0.0",
                    supported_commands: Object.keys(this.commands),
                    total_requests: this.requestCount,
                },
                system_info: { node_version: process.version, platform: process.platform },
                timestamp: Date.now() / 1000,
            }),
            // test hooks
            sleep: (args) => {
                const seconds = Number(args.seconds || 1);
                blockFor(seconds);
                return { status: "ok", slept: seconds };
            },
            whoami: () => ({
                pid: process.pid,
                ppid: process.ppid,
                argv: process.argv,
                worker_id: process.env.SNAKEPIT_WORKER_ID || null,
            }),
            // v0.3 handlers may report failure through `status`; this bridge turns it into
            // `success: false`.
            soft_error: () => ({ status: "error", error: "soft failure reported by the handler" }),
        };
    }

    process(command, args) {
        this.requestCount++;
        const handler = this.commands[command];
        if (!handler) {
            throw new Error(`Unknown command: ${command}`);
        }
        return handler(args);
    }

    compute(args) {
        const operation = args.operation || "add";
        const a = args.a || 0;
        const b = args.b || 0;
        let result;
        switch (operation) {
            case "add": result = a + b; break;
            case "subtract": result = a - b; break;
            case "multiply": result = a * b; break;
            case "divide":
                if (b === 0) throw new Error("Division by zero");
                result = a / b;
                break;
            case "power": result = Math.pow(a, b); break;
            case "sqrt":
                if (a < 0) throw new Error("Square root of negative number");
                result = Math.sqrt(a);
                break;
            default: throw new Error(`Unsupported operation: ${operation}`);
        }
        if (!isFinite(result)) throw new Error(`Invalid result: ${result}`);
        return { status: "ok", operation, inputs: { a, b }, result, timestamp: Date.now() / 1000 };
    }

    random(args) {
        const type = args.type || "uniform";
        let value;
        if (type === "uniform") {
            const min = args.min || 0;
            const max = args.max || 1;
            value = Math.random() * (max - min) + min;
        } else if (type === "integer") {
            const min = args.min || 0;
            const max = args.max || 100;
            value = Math.floor(Math.random() * (max - min + 1)) + min;
        } else if (type === "normal") {
            const u1 = Math.random();
            const u2 = Math.random();
            value = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2) * (args.std || 1) + (args.mean || 0);
        } else {
            throw new Error(`Unsupported random type: ${type}`);
        }
        return { status: "ok", type, parameters: args, value, timestamp: Date.now() / 1000 };
    }
}

function writeMessage(message) {
    const body = Buffer.from(JSON.stringify(message), "utf-8");
    const header = Buffer.allocUnsafe(4);
    header.writeUInt32BE(body.length, 0);
    process.stdout.write(header);
    process.stdout.write(body);
}

function main() {
    const handler = new GenericHandler();
    let buffer = Buffer.alloc(0);
    let stopped = false;

    process.on("SIGTERM", () => process.exit(0));
    process.on("SIGINT", () => process.exit(0));
    log("Generic JavaScript Bridge started in pool-worker mode");

    const handle = (body) => {
        let request;
        try {
            request = JSON.parse(body.toString("utf-8"));
            if (request && request.command === "unparseable") {
                throw new Error("the stand-in treats this frame as unparseable");
            }
        } catch (error) {
            log(`Error parsing message: ${error}`);
            record({ unparseable: true });
            stopped = true;
            return;
        }
        record({ type: request.type, command: request.command, id: request.id });
        let response;
        try {
            const result = handler.process(request.command, request.args || {});
            if (result && result.status === "error") {
                response = { id: request.id, success: false, error: result.error, timestamp: new Date().toISOString() };
            } else {
                response = { id: request.id, success: true, result, timestamp: new Date().toISOString() };
            }
        } catch (error) {
            response = { id: request.id, success: false, error: error.message, timestamp: new Date().toISOString() };
        }
        writeMessage(response);
    };

    process.stdin.on("data", (chunk) => {
        buffer = Buffer.concat([buffer, chunk]);
        while (!stopped && buffer.length >= 4) {
            const length = buffer.readUInt32BE(0);
            if (buffer.length < 4 + length) break;
            const body = buffer.subarray(4, 4 + length);
            buffer = buffer.subarray(4 + length);
            handle(body);
        }
    });
    process.stdin.on("end", () => process.exit(0));
}

main();
