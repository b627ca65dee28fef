/** Shared-memory layout between a model-parallel link's main thread and its receiving thread. */
export const CTRL = {
  /** messages handed over so far (or failures: status says which) */
  seq: 0,
  /** messages the main thread has taken */
  taken: 1,
  /** bytes of the current payload */
  length: 2,
  /** bytes of the current key (or of the failure reason) */
  keyLength: 3,
  /** 0 fine, 1 failed: the key area holds the reason */
  status: 4,
} as const;

export interface ExchangeThreadData {
  ctrl: SharedArrayBuffer;
  payload: SharedArrayBuffer;
  key: SharedArrayBuffer;
  bind: string;
  /** the other worker's endpoint, which this link's thread sends to */
  connect: string;
  peerRank: number;
  maxMessageBytes: number;
  heartbeat: { intervalMs: number; timeoutMs: number };
}
