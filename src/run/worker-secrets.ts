/**
 * What the launcher tells a worker on its stdin: one line of JSON with the
 * worker's CURVE keys (secrets go neither on a command line, which `ps`
 * shows to every user, nor in the environment). The pipe then stays open
 * for the whole run: when it closes, the launcher is gone (killed, crashed;
 * through ssh too, which forwards the end of stdin), and the worker stops.
 */
import { z } from 'zod';
import { checkKey, type WorkerKeys } from '../wire/curve.js';

const Key = z.string().refine((k) => { try { checkKey(k, 'key'); return true; } catch { return false; } }, { message: 'expected a 40-character Z85 CURVE key' });
const Secrets = z.strictObject({
  keys: z.strictObject({ own: z.strictObject({ publicKey: Key, secretKey: Key }), coordinator: Key, workers: z.array(Key).min(1) }).optional(),
});

/** The longest first line accepted: a key line for 1024 workers is ~45 KB. */
const MAX_LINE = 1 << 20;

export interface WorkerStdin { keys?: WorkerKeys; launcherGone: AbortSignal }

/** Reads the first line of `input`; rejects with what was wrong if it is not the launcher's secrets line within `timeoutMs`. */
export function readWorkerStdin(input: NodeJS.ReadableStream, timeoutMs: number): Promise<WorkerStdin> {
  const gone = new AbortController();
  return new Promise<WorkerStdin>((resolve, reject) => {
    let buf = '';
    let done = false;
    const timer = setTimeout(() => finish(new Error(`no secrets line on stdin within ${timeoutMs / 1000} s (a worker is started by \`splitnet launch\`)`)), timeoutMs);
    timer.unref();
    const finish = (err: Error | undefined, line?: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      const refuse = (e: Error) => {
        // Nothing more is read: a refused worker must not be kept alive by its stdin.
        (input as NodeJS.ReadableStream & { destroy?: () => void }).destroy?.();
        reject(e);
      };
      if (err) return refuse(err);
      let raw: unknown;
      try {
        raw = JSON.parse(line!);
      } catch (e) {
        return refuse(new Error(`stdin: the secrets line is not JSON (${(e as Error).message})`));
      }
      const r = Secrets.safeParse(raw);
      if (!r.success) return refuse(new Error(`stdin: bad secrets line (${r.error.issues[0]!.path.join('.') || '(top)'}: ${r.error.issues[0]!.message})`));
      resolve({ ...(r.data.keys ? { keys: r.data.keys } : {}), launcherGone: gone.signal });
    };
    input.setEncoding('utf8');
    input.on('data', (chunk: string) => {
      if (done) return; // later input is ignored; only the end of the pipe matters
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl >= 0) finish(undefined, buf.slice(0, nl));
      else if (buf.length > MAX_LINE) finish(new Error(`stdin: the secrets line is longer than ${MAX_LINE} bytes`));
    });
    const ended = () => {
      finish(new Error('stdin closed before the secrets line'));
      gone.abort();
    };
    input.on('end', ended);
    input.on('close', ended);
    input.on('error', ended);
  });
}
