/**
 * The average over a ring, as the tests need it: reduce-scatter, the owned
 * chunk scaled by 1/N, all-gather (what DataParallelReplica does, with its
 * SGD step in the middle). The owner scales before handing the chunk around,
 * never after: the frames are zero-copy.
 */
import type { RingAllReduce } from '../../src/wire/ring-allreduce.js';

export async function allReduce(ring: RingAllReduce, bucket: number, data: Float32Array): Promise<void> {
  const [b, e] = await ring.reduceScatter(bucket, data);
  for (let i = b; i < e; i++) data[i]! *= 1 / ring.world;
  await ring.allGather(bucket, data);
}
