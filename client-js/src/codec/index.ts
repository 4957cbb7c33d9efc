/**
 * The Tern wire codec, written from `spec/protocol.md`: every frame of protocol version 1 (the key
 * directory, to-device and key backup frames of end-to-end encryption, §19, included), the encoder,
 * the decoder of one whole frame and the incremental decoder of a byte stream, with the spec's
 * decode errors and their wire codes. Checked against every golden vector in `spec/vectors/`.
 *
 * @module
 */

export * from "./e2e.js";
export * from "./errors.js";
export * from "./frame.js";
export * from "./frames.js";
export * from "./limits.js";
export {
  type Codec,
  Reader,
  Writer,
  decodeUtf8,
  encodeUtf8,
  specFieldName,
  utf8Chars,
} from "./primitives.js";
export * from "./types.js";
