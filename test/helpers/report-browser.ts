import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { tempDir } from './idx-files.js';

const CHROMIUM = '/usr/bin/chromium';
export const CHART_IDS = ['chart-throughput', 'chart-breakdown', 'chart-loss', 'chart-bytes', 'chart-forecast'];

/** What report.html gave each chart (window.__charts), by canvas id. */
export type GivenCharts = Record<string, { labels: unknown[]; datasets: Array<{ label: string; data: Array<number | null> }> }>;

export interface OpenedReport { page: Page; charts: GivenCharts; errors: string[]; requests: string[]; dir: string }

/**
 * Debian's chromium under playwright-core, for opening report.html files.
 * Started by the first test that needs it, so a missing chromium fails each
 * test (a failing beforeAll would only mark them skipped). A fresh profile in
 * a temp dir, nothing from the network. `close()` in afterAll.
 */
export class ReportBrowser {
  private context: BrowserContext | undefined;
  private profile: string | undefined;

  private async browser(): Promise<BrowserContext> {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`expected Debian's chromium at ${CHROMIUM} (apt-get install chromium), found nothing there`);
    }
    this.profile ??= tempDir('splitnet-chromium-');
    this.context ??= await chromium.launchPersistentContext(this.profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1200, height: 900 },
      timeout: 60_000,
    });
    return this.context;
  }

  async close(): Promise<void> {
    await this.context?.close();
    if (this.profile) rmSync(this.profile, { recursive: true, force: true });
  }

  /** Writes `html` to a temp report.html and opens it. */
  async openHtml(html: string): Promise<OpenedReport> {
    const file = join(tempDir('splitnet-report-'), 'report.html');
    writeFileSync(file, html);
    return this.open(file);
  }

  /** Opens a report.html as a file and waits for its five charts. */
  async open(file: string): Promise<OpenedReport> {
    const page = await (await this.browser()).newPage();
    const errors: string[] = [];
    const requests: string[] = [];
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
    page.on('pageerror', (e) => { errors.push(`page: ${e.message}`); });
    page.on('request', (r) => { requests.push(r.url()); });
    await page.goto(pathToFileURL(file).href);
    try {
      await page.waitForFunction(() => document.body.dataset.chartsReady === '5', null, { timeout: 30_000 });
    } catch (e) {
      const ready = await page.evaluate(() => document.body.dataset.chartsReady);
      throw new Error(`expected chartsReady "5", got ${JSON.stringify(ready)}; page errors: ${JSON.stringify(errors)} (${(e as Error).message})`);
    }
    const charts = await page.evaluate(() => (window as unknown as { __charts: GivenCharts }).__charts);
    return { page, charts, errors, requests, dir: dirname(file) };
  }
}
