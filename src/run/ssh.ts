/**
 * Remote workers over ssh, with no shell on this side. The config's `ssh`
 * template is split into an argv by a small, strict tokenizer (words, '…'
 * and "…" quoting, nothing else), and {host} and {command} are filled in
 * after the split, so nothing in a host name is ever read as shell syntax
 * here, and the launcher runs ssh itself: stopping it stops ssh, not a
 * shell that would leave ssh behind.
 *
 * On the remote side the command is a POSIX sh script (whatever the login
 * shell is) that runs the installed `splitnet worker` as the leader of its
 * own process group and prints that group's id on stderr first, so the
 * launcher can stop the worker and anything it started
 * (`ssh HOST kill -TERM -PGID`), not only its own end of the connection.
 */
import { UsageError } from '../errors.js';

/** How errors name the template. */
const KEY = "cluster config key 'ssh'";

/** Characters a word may hold outside quotes: nothing a shell would expand or act on. */
const PLAIN = /[A-Za-z0-9_@%+=:,./{}-]/;

/**
 * Splits a command template into words: runs of plain characters, '…'
 * (literal) and "…" (literal, without $, ` or \, which a shell would
 * expand) may be joined into one word; whitespace separates words. Anything
 * else ($, ;, |, &, ~, globs, backslashes, redirections) is refused: there
 * is no shell here to give it a meaning.
 */
export function splitTemplate(template: string, key = KEY): string[] {
  const words: string[] = [];
  let word: string | undefined;
  const fail = (i: number, what: string) => {
    throw new UsageError(`${key}: ${what} at character ${i + 1} of ${JSON.stringify(template)}: ` +
      "the template is split into words without a shell (plain words, '…' and \"…\" quoting); quote it if it is meant literally");
  };
  for (let i = 0; i < template.length; i++) {
    const c = template[i]!;
    if (/\s/.test(c)) {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else if (c === "'" || c === '"') {
      const end = template.indexOf(c, i + 1);
      if (end < 0) fail(i, `unterminated ${c}`);
      const quoted = template.slice(i + 1, end);
      if (c === '"') {
        const bad = /[$`\\]/.exec(quoted);
        if (bad) fail(i + 1 + bad.index, `'${bad[0]}' inside "…" (a shell would expand it; use '…')`);
      }
      word = (word ?? '') + quoted;
      i = end;
    } else if (PLAIN.test(c)) {
      word = (word ?? '') + c;
    } else {
      fail(i, `unexpected '${c}'`);
    }
  }
  if (word !== undefined) words.push(word);
  return words;
}

/** The template's words, checked: a program first, {command} exactly once as a word of its own, {host} somewhere, no other {…}. */
export function checkSshTemplate(template: string): string[] {
  const words = splitTemplate(template);
  if (words.length === 0) throw new UsageError(`${KEY}: is empty: expected e.g. "ssh -o BatchMode=yes {host} {command}"`);
  const other = words.flatMap((w) => w.replace(/\{(host|command)\}/g, '').match(/[{}]/g) ?? []);
  if (other.length > 0) {
    throw new UsageError(`${KEY}: ${JSON.stringify(template)} has a '{' or '}' that is not part of {host} or {command}`);
  }
  const commands = words.filter((w) => w.includes('{command}'));
  if (commands.length !== 1 || commands[0] !== '{command}') {
    throw new UsageError(`${KEY}: ${JSON.stringify(template)} must have {command} exactly once, as a word of its own ` +
      `(it becomes one argument: the remote shell command), found ${commands.length === 0 ? 'none' : commands.map((w) => JSON.stringify(w)).join(', ')}`);
  }
  if (!words.some((w) => w.includes('{host}'))) throw new UsageError(`${KEY}: ${JSON.stringify(template)} has no {host}`);
  if (/\{(host|command)\}/.test(words[0]!)) throw new UsageError(`${KEY}: ${JSON.stringify(template)} must start with the program to run (e.g. ssh), not a placeholder`);
  return words;
}

/**
 * The argv that runs `command` on `host`: the template's words with {host}
 * and {command} replaced. A function replacer, so `$&`, `$'` or `` $` `` in a
 * host name stay what they are; a host name that starts with '-' is refused
 * (ssh would read it as an option).
 */
export function sshArgv(template: string, host: string, command: string): string[] {
  if (host.startsWith('-')) throw new UsageError(`worker host ${JSON.stringify(host)} starts with '-': ssh would read it as an option`);
  return checkSshTemplate(template).map((w) => (w === '{command}' ? command : w.replace(/\{host\}/g, () => host)));
}

/** A word for a POSIX shell: as it is when plainly safe, else single-quoted. */
export const shellQuote = (s: string): string => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** The line the remote script writes on stderr before anything else of the worker's: the worker's process group. */
export const REMOTE_MARKER = 'splitnet-remote-worker pgid';

/** The worker's process group from one stderr line of a remote worker, if it is the marker line. */
export function parseRemoteMarker(line: string): number | undefined {
  const m = new RegExp(`^${REMOTE_MARKER} (\\d+)$`).exec(line.trim());
  return m ? Number(m[1]) : undefined;
}

/** No quote characters: the text goes inside a script that is itself quoted for the remote login shell (fish reads \' inside '…'). */
export const NOT_INSTALLED = 'see the README section Installing on a worker host';

/**
 * The one string ssh hands to the remote login shell. It runs `sh -c SCRIPT`
 * (the same script under bash, zsh or fish logins), and the script:
 * refuses to go on without an installed `splitnet` (never `npx`, which
 * would download whatever the registry serves under that name); keeps the
 * connection's stdin on fd 3 for the worker (an asynchronous command's stdin
 * is /dev/null otherwise); starts `setsid splitnet worker …` in the
 * background, which is never a process-group leader, so setsid makes it
 * one without forking (`exec setsid` from the shell would fork under sshd,
 * whose session shell already leads a group, and lose the pid); prints the
 * marker with that pid (= its process group); and waits, so ssh ends with
 * the worker's exit status.
 */
export function remoteWorkerCommand(host: string, env: Record<string, string>, workerArgs: string[]): string {
  const missing = (what: string, why: string) =>
    `if ! command -v ${what} >/dev/null 2>&1; then echo ${shellQuote(`${why} is not installed on ${host}: ${NOT_INSTALLED}`)} >&2; exit 127; fi`;
  const assignments = Object.entries(env).map(([k, v]) => `${k}=${shellQuote(v)} `).join('');
  // One line: a login shell such as csh refuses a newline inside '…'.
  const script = `${missing('splitnet', 'splitnet')}; ${missing('setsid', 'setsid (util-linux)')}; exec 3<&0; ` +
    `${assignments}setsid splitnet ${workerArgs.map(shellQuote).join(' ')} 0<&3 3<&- & ` +
    `echo "${REMOTE_MARKER} $!" >&2; exec 3<&-; wait "$!"`;
  return `sh -c ${shellQuote(script)}`;
}

/** The remote command that signals a worker's process group (its pid too: the group may not exist yet for a moment after the marker). */
export function remoteKillCommand(pgid: number, signal: 'TERM' | 'KILL'): string {
  // `kill -SIG -PGID`: dash's kill takes neither `--` nor `-s SIG -PGID`.
  return `sh -c ${shellQuote(`kill -${signal} -${pgid} 2>/dev/null || kill -${signal} ${pgid} 2>/dev/null; exit 0`)}`;
}
