import type { z } from 'zod';

/**
 * One zod issue as one line: where, the key's path, what is wrong.
 * `where: workers.0: unknown key 'gpu'`, `where: batch: Too small: expected number to be >=1`.
 * The one formatter for configs and for network messages.
 */
export function describeIssue(where: string, issue: z.core.$ZodIssue, top = '(top level)'): string {
  const key = issue.path.length > 0 ? issue.path.join('.') : top;
  const keys = issue.code === 'unrecognized_keys' ? ` unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `'${k}'`).join(', ')}` : '';
  return `${where}: ${key}:${keys || ` ${issue.message}`}`;
}
