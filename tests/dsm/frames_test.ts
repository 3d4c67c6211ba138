import assert from "node:assert/strict";
import { decodeBody, encodeFrame, FrameReader, type Message, MsgType } from "../../dsm/frames.ts";
import { DsmProtocolError } from "../../dsm/errors.ts";
import { prng } from "../../dsm/programs/util.ts";

function sample(i: number): Message {
  const withData = i % 3 === 0;
  return {
    type: withData ? MsgType.DATA : MsgType.READ,
    region: i % 5,
    block: i * 7919,
    a: i % 4,
    b: i % 2,
    data: withData
      ? Uint8Array.from({ length: 64 + (i % 4) * 64 }, (_, k) => (k + i) & 0xff)
      : null,
  };
}

Deno.test("a frame encodes its header little-endian and decodes to the same message", () => {
  const msg = sample(3);
  const frame = encodeFrame(msg);
  const dv = new DataView(frame.buffer);
  assert.equal(dv.getUint32(0, true), frame.length - 4);
  assert.equal(frame[4], MsgType.DATA);
  assert.equal(dv.getUint32(8, true), 3 * 7919);
  assert.deepEqual(decodeBody(frame.subarray(4)), msg);
});

/** The frames of `msgs` back to back, as one byte stream. */
function encodeStream(msgs: Message[]): Uint8Array {
  const frames = msgs.map(encodeFrame);
  const stream = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let off = 0;
  for (const f of frames) {
    stream.set(f, off);
    off += f.length;
  }
  return stream;
}

Deno.test("frames split at random points reassemble in order", () => {
  const seed = 20261124;
  const rand = prng(seed);
  const msgs = Array.from({ length: 200 }, (_, i) => sample(i));
  const stream = encodeStream(msgs);
  const got: Message[] = [];
  const reader = new FrameReader((m) => got.push(m));
  for (let pos = 0; pos < stream.length;) {
    const n = 1 + (rand() % 97);
    reader.push(stream.subarray(pos, pos + n));
    pos += n;
  }
  assert.deepEqual(got, msgs, `seed ${seed}`);
});

Deno.test("frames read through one reused buffer, as a socket reader does, decode intact", () => {
  const seed = 20261125;
  const rand = prng(seed);
  const msgs = Array.from({ length: 200 }, (_, i) => sample(i));
  const stream = encodeStream(msgs);
  const got: Message[] = [];
  const reader = new FrameReader((m) => got.push(m));
  const scratch = new Uint8Array(256);
  for (let pos = 0; pos < stream.length;) {
    const n = Math.min(1 + (rand() % 255), stream.length - pos);
    scratch.set(stream.subarray(pos, pos + n));
    reader.push(scratch.subarray(0, n));
    scratch.fill(0xee); // the next read overwrites the buffer
    pos += n;
  }
  assert.deepEqual(got, msgs, `seed ${seed}`);
});

Deno.test("a frame with an impossible length or an unknown type is rejected", () => {
  const reader = new FrameReader(() => {});
  const huge = new Uint8Array(8);
  new DataView(huge.buffer).setUint32(0, 1 << 30, true);
  assert.throws(() => reader.push(huge), DsmProtocolError);
  const body = new Uint8Array(16);
  body[0] = 200;
  assert.throws(() => decodeBody(body), /unknown message type 200/);
  assert.throws(() => decodeBody(new Uint8Array(5)), DsmProtocolError);
  assert.throws(
    () =>
      encodeFrame({
        type: MsgType.DATA,
        region: 0,
        block: 0,
        a: 0,
        b: 0,
        data: new Uint8Array(8192),
      }),
    DsmProtocolError,
  );
});
