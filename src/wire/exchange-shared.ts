/** Shared-memory layout between a model-parallel link's main thread and its receiving thread. */
export const CTRL = {
  /** messages handed over so far (or failures: status says which) */
  seq: 0,
  /** messages the main thread has taken */
  taken: 1,
  /** bytes of the current payload */
  length: 2,
  /** bytes of the current key */
  keyLength: 3,
  /** 0 fine, 1 failed: the reason area holds why (checked before every hand-over) */
  status: 4,
  /** bytes of the failure reason */
  reasonLength: 5,
} as const;

/** Messages the link's thread holds before it calls the peer misbehaving (two are ever outstanding). */
export const MAX_QUEUED = 16;

export interface ExchangeThreadData {
  ctrl: SharedArrayBuffer;
  payload: SharedArrayBuffer;
  key: SharedArrayBuffer;
  reason: SharedArrayBuffer;
  bind: string;
  /** the other worker's endpoint, which this link's thread sends to */
  connect: string;
  peerRank: number;
  maxMessageBytes: number;
  heartbeat: { intervalMs: number; timeoutMs: number };
}
