/**
 * Gateway pods for the end-to-end tests: the real `wsgate serve` binary, built by cargo
 * (`target/debug/wsgate`, or `WSGATE_BIN`), on fresh loopback ports, with a clean
 * environment. Pushes go through the binary's own CLI (`wsgate publish` / `wsgate send`),
 * which calls the pod's gRPC control plane.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { SECRET } from "./token.js";
import { freePort, killAndWait, waitFor } from "./wait.js";

const run = promisify(execFile);

/** The gateway binary: `WSGATE_BIN`, else the workspace's `target/debug/wsgate`. */
export function wsgateBinary(): string {
  // build/test/support/pod.js -> the repository root is five levels up.
  const path = process.env.WSGATE_BIN ?? fileURLToPath(new URL("../../../../../target/debug/wsgate", import.meta.url));
  if (!existsSync(path)) {
    throw new Error(`no gateway binary at ${path}: run \`cargo build\` first (or set WSGATE_BIN)`);
  }
  return path;
}

export interface PodOptions {
  /** Cluster mode on this Redis; embedded mode without it. */
  redisUrl?: string;
  /** JWT auth with the tests' secret (`support/token.ts`); else auth is off (`?user=`). */
  jwt?: boolean;
  /** Reuse these ports (to restart a pod in place). */
  http?: number;
  grpc?: number;
  /** More `WSGATE__…` settings. */
  env?: Record<string, string>;
}

export class Pod {
  private child: ChildProcess | undefined;
  private constructor(
    readonly name: string,
    readonly http: number,
    readonly grpc: number,
    private logFile: string,
    private options: PodOptions,
  ) {}

  /** Spawns `wsgate serve` and waits until `/readyz` answers 200. */
  static async start(name: string, options: PodOptions = {}): Promise<Pod> {
    const http = options.http ?? (await freePort());
    let grpc = options.grpc ?? (await freePort());
    while (grpc === http) grpc = await freePort();
    const dir = mkdtempSync(join(tmpdir(), `wsgate-${name}-`));
    const pod = new Pod(name, http, grpc, join(dir, "pod.log"), options);
    await pod.spawn();
    return pod;
  }

  /** Starts this pod again on the same ports with the same settings (after `term`/`kill`). */
  async restart(): Promise<void> {
    await this.kill();
    await this.spawn();
  }

  private async spawn(): Promise<void> {
    const env: Record<string, string> = {
      POD_NAME: this.name,
      RUST_LOG: "info",
      WSGATE__SERVER__LISTEN: `127.0.0.1:${this.http}`,
      WSGATE__SERVER__GRPC_LISTEN: `127.0.0.1:${this.grpc}`,
      WSGATE__REGISTRY__POD_TTL: "1s",
      WSGATE__SHUTDOWN__GRACE: "1s",
    };
    if (this.options.redisUrl) env.WSGATE__REDIS__URL = this.options.redisUrl;
    if (this.options.jwt) {
      env.WSGATE__AUTH__MODE = "jwt";
      env.WSGATE__AUTH__JWT__SECRET = SECRET;
    }
    Object.assign(env, this.options.env);
    const log = openSync(this.logFile, "a");
    const child = spawn(wsgateBinary(), ["serve"], { env, stdio: ["ignore", log, log] });
    this.child = child;
    try {
      await waitFor(`pod ${this.name} to be ready`, async () => {
        if (child.exitCode !== null) throw new Error(`pod ${this.name} exited (${child.exitCode}):\n${this.log()}`);
        return (await this.readyz()) === 200;
      }, 15_000);
    } catch (e) {
      await this.kill();
      throw e;
    }
  }

  /** Status of `GET /readyz`, or 0 when it cannot be reached. */
  async readyz(): Promise<number> {
    try {
      const response = await fetch(`http://127.0.0.1:${this.http}/readyz`, { signal: AbortSignal.timeout(2000) });
      return response.status;
    } catch {
      return 0;
    }
  }

  /** The WebSocket URL, with `?user=` when given. */
  wsUrl(user?: string): string {
    return `ws://127.0.0.1:${this.http}/ws${user ? `?user=${encodeURIComponent(user)}` : ""}`;
  }

  /** Everything the pod printed. */
  log(): string {
    try {
      return readFileSync(this.logFile, "utf8");
    } catch {
      return "";
    }
  }

  get running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** SIGTERM: the pod drains (readiness off, 1001 to every session) and exits. */
  async term(timeoutMs = 10_000): Promise<number | null> {
    const child = this.child;
    if (!child || !this.running) return child?.exitCode ?? null;
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    child.kill("SIGTERM");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), timeoutMs)));
    // The timer must not outlive the exit: it would keep the test process alive.
    const code = await Promise.race([exited, timeout]).finally(() => clearTimeout(timer));
    if (code === "timeout") throw new Error(`pod ${this.name} did not exit within ${timeoutMs} ms of SIGTERM`);
    this.child = undefined;
    return code;
  }

  /** SIGKILL, and wait for the process to end. */
  async kill(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    await killAndWait(child);
  }

  /** `wsgate publish` through this pod's control plane; returns the CLI's output. */
  async publish(topic: string, text: string, options: { json?: boolean } = {}): Promise<string> {
    return this.cli(["publish", "--topic", topic, ...(options.json ? ["--json"] : []), "--", text]);
  }

  /** `wsgate send` to every session of `user`. */
  async send(user: string, text: string, options: { json?: boolean } = {}): Promise<string> {
    return this.cli(["send", "--user", user, ...(options.json ? ["--json"] : []), "--", text]);
  }

  /** `wsgate presence`: one line per live session of `user`, cluster-wide (`ID  pod=NAME  …`). */
  async presence(user: string): Promise<string[]> {
    const out = await this.cli(["presence", user]);
    return out.split("\n").filter((line) => / pod=/.test(line));
  }

  private async cli(args: string[]): Promise<string> {
    const [command, ...rest] = args;
    const { stdout } = await run(wsgateBinary(), [command!, "--grpc", `127.0.0.1:${this.grpc}`, ...rest], {
      env: {},
      timeout: 10_000,
    });
    return stdout;
  }
}
