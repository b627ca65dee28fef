/**
 * The worker's side of --mode model: tower `rank` of the two-tower net, a
 * peer link to the other tower's worker, the whole batch every step (both
 * towers see every sample), and evaluation in lockstep with the other tower.
 */
import * as tf from '@tensorflow/tfjs';
import { epochOrder, makeBatch } from '../data/batches.js';
import { buildModel } from '../model/build.js';
import { shapesOf } from '../model/shapes.js';
import { ModelParallelTower } from '../parallel/model-parallel.js';
import { specOf, type TrainConfig } from '../config/train.js';
import { loadRunData } from '../data/run-data.js';
import { Sgd } from '../model/sgd.js';
import { evaluate } from '../parallel/evaluate.js';
import { PeerExchange } from '../wire/exchange.js';
import type { ToWorker } from '../wire/protocol.js';
import { modelState, type Session } from './session.js';

type Setup = Extract<ToWorker, { kind: 'setup' }>;

export async function openModelSession(setup: Setup, cfg: TrainConfig, backendName: string, load: (m: ReturnType<typeof buildModel>, o: Sgd) => void): Promise<Session> {
  if (cfg.arch !== 'original') throw new Error(`--mode model splits the two-tower 'original' net; this run is '${cfg.arch}'`);
  if (setup.world !== 2) throw new Error(`--mode model needs 2 workers (one per tower), the cluster has ${setup.world}`);
  const rank = setup.rank;
  const data = loadRunData(cfg);
  const spec = specOf(cfg);
  const model = buildModel(spec, { seed: cfg.seed, towers: [rank] });
  const opt = new Sgd({ lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay });
  load(model, opt);
  // The largest tensor that crosses: a tower's output at any layer for the largest batch.
  const biggest = Math.max(...shapesOf(spec).map((s) => s.outputShape.reduce((a, b) => a * b, 1)));
  const ex = await PeerExchange.open({
    bind: setup.peers[rank]!, connect: setup.peers[1 - rank]!, peerRank: 1 - rank,
    capacityBytes: biggest * Math.max(cfg.batch, cfg.evalBatch) * 4 + 1024,
    maxMessageBytes: setup.maxMessageBytes, heartbeat: setup.heartbeat, waitMs: 10 * 60_000,
  });
  const tower = new ModelParallelTower(model, opt, ex, rank);
  const stepsPerEpoch = Math.floor(data.train.count / cfg.batch);
  let order: { epoch: number; samples: Uint32Array } = { epoch: -1, samples: new Uint32Array(0) };

  return {
    model,
    backendName,
    async step(msg) {
      if (msg.step >= stepsPerEpoch) throw new Error(`step ${msg.step} of epoch ${msg.epoch}: an epoch has ${stepsPerEpoch}`);
      if (order.epoch !== msg.epoch) order = { epoch: msg.epoch, samples: epochOrder(data.train.count, cfg.seed, msg.epoch) };
      const { x, y } = makeBatch(data.train, order.samples.subarray(msg.step * cfg.batch, (msg.step + 1) * cfg.batch), {
        resolution: cfg.resolution, channels: cfg.channels,
        ...(cfg.augment ? { augment: { seed: cfg.seed, epoch: msg.epoch } } : {}),
      });
      opt.opts.lr = msg.lr;
      const before = ex.bytesSent;
      try {
        const r = tower.step(x, y, msg.globalStep, { seed: cfg.seed, step: msg.globalStep, firstSample: 0 }, setup.microBatches);
        return { kind: 'stepDone', globalStep: msg.globalStep, loss: r.loss, samples: cfg.batch, computeMs: r.computeMs, allreduceWaitMs: 0, bytesSent: ex.bytesSent - before };
      } finally {
        tf.dispose([x, y]);
      }
    },
    evaluateShard(epoch) {
      // Both towers are needed for every sample: the two workers walk the test set together.
      const ev = evaluate(model, data.test, {
        resolution: cfg.resolution, channels: cfg.channels, batch: cfg.evalBatch, limit: 0,
        logits: (x, b) => tower.logits(x, `eval${epoch}/${b}`),
      });
      return { kind: 'evalDone', epoch, correct: Math.round(ev.accuracy * ev.samples), lossSum: ev.loss * ev.samples, samples: ev.samples };
    },
    state: () => modelState(model, opt),
    close() {
      ex.close();
    },
  };
}
