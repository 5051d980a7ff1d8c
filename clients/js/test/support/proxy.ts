/**
 * A TCP load balancer on loopback, as in front of a real deployment: each new connection
 * goes to the next upstream port in turn, skipping ports that refuse the connection. The
 * client under test knows only the proxy's address, so a reconnect after a pod drains
 * lands on another pod.
 */
import { type Server, type Socket, connect, createServer } from "node:net";

export class Proxy {
  private next = 0;
  private sockets = new Set<Socket>();
  /** The client side and the upstream side of every open connection. */
  private pairs = new Set<[Socket, Socket]>();
  private constructor(
    private server: Server,
    readonly port: number,
    public upstreams: number[],
  ) {}

  static async start(upstreams: number[]): Promise<Proxy> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const proxy = new Proxy(server, (server.address() as { port: number }).port, upstreams);
    server.on("connection", (socket) => proxy.accept(socket));
    return proxy;
  }

  /** `ws://127.0.0.1:PORT/ws` plus `query`. */
  wsUrl(query = ""): string {
    return `ws://127.0.0.1:${this.port}/ws${query}`;
  }

  private accept(client: Socket, tries = 0): void {
    this.track(client);
    client.pause();
    if (tries >= this.upstreams.length) return void client.destroy();
    const port = this.upstreams[this.next++ % this.upstreams.length]!;
    const upstream = connect({ host: "127.0.0.1", port });
    let connected = false;
    upstream.once("error", () => (connected ? client.destroy() : this.accept(client, tries + 1)));
    upstream.once("connect", () => {
      connected = true;
      this.track(upstream);
      upstream.on("error", () => client.destroy());
      client.on("error", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
      client.on("close", () => upstream.destroy());
      const pair: [Socket, Socket] = [client, upstream];
      this.pairs.add(pair);
      client.once("close", () => this.pairs.delete(pair));
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
  }

  /**
   * A dead link: the connections open now stay open but carry nothing more in either
   * direction (no close, no error), as when a network path silently drops packets. New
   * connections work.
   */
  freeze(): void {
    for (const [client, upstream] of this.pairs) {
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pause();
      upstream.pause();
    }
    this.pairs.clear();
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
