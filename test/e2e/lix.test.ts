/**
 * Lix 2.93.0's command form through real OpenSSH, driven the way Lix drives it: `ssh -T … bash`,
 * then `echo started` on stdin, wait for `started` on stdout, then the exec line followed at once
 * by the protocol's first bytes. The handshake must come back from a real worker.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { Rig, run, type DaemonProcess } from '../rig/rig.js';

/** An ssh client with pipes, whose stdout is collected so the test can wait for bytes. */
function lixSsh(rig: Rig, daemon: DaemonProcess) {
  const child = spawn('ssh', rig.sshArgs(daemon, ['bash']), { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = Buffer.alloc(0);
  let stderr = '';
  const waiters: (() => void)[] = [];
  child.stdout.on('data', (c: Buffer) => {
    stdout = Buffer.concat([stdout, c]);
    for (const w of waiters.splice(0)) w();
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdin.on('error', () => undefined);
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return {
    child,
    exited,
    stderr: () => stderr,
    /** Resolves with stdout once it holds at least `bytes` bytes (or rejects after the timeout). */
    async stdoutAtLeast(bytes: number, timeoutMs = 60_000): Promise<Buffer> {
      const deadline = Date.now() + timeoutMs;
      while (stdout.length < bytes) {
        if (Date.now() > deadline || child.exitCode !== null)
          throw new Error(`stdout has ${stdout.length} of ${bytes} bytes; stderr: ${stderr}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 200);
        });
      }
      return stdout;
    },
  };
}

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

t.test('Lix 2.93.0: bash, echo started, exec …', async (t) => {
  const rig = await Rig.start();
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();

  const handshakes: { exec: string; hello: Buffer; answer: Buffer; mode: string }[] = [
    // Serve protocol: client magic + version 2.7; the server answers its magic first.
    {
      exec: 'exec nix-store --serve --write\n',
      hello: hex('eb9d0c39 00000000 07020000 00000000'),
      answer: hex('cbee5254 00000000'),
      mode: 'serve',
    },
    // Worker protocol: client magic; the daemon answers its magic first.
    { exec: 'exec nix-daemon --stdio\n', hello: hex('6378696e 00000000'), answer: hex('6f697864 00000000'), mode: 'daemon' },
  ];
  for (const { exec, hello, answer, mode } of handshakes) {
    const ssh = lixSsh(rig, daemon);
    ssh.child.stdin.write('echo started\n');
    const started = await ssh.stdoutAtLeast('started\n'.length);
    t.equal(started.toString(), 'started\n', `${mode}: "started" answered, nothing else on stdout`);
    // The exec line and the protocol's first bytes in one write, as Lix's buffered sink may send them.
    ssh.child.stdin.write(Buffer.concat([Buffer.from(exec), hello]));
    const out = await ssh.stdoutAtLeast('started\n'.length + answer.length, 90_000);
    t.same(out.subarray('started\n'.length, 'started\n'.length + answer.length), answer, `${mode}: the worker's magic came back`);
    ssh.child.stdin.end();
    ssh.child.kill('SIGKILL');
    await ssh.exited;
    const session = await daemon.waitFor((l) => l.msg === 'session started' && l.command === mode, 10_000);
    t.ok(session.worker, `${mode}: piped to a worker`);
  }

  // Anything else on those lines: one line on stderr, exit status 1, no shell anywhere.
  const bad = [
    'echo started; id\n',
    'echo started\nexec nix-daemon --stdio; rm -rf /\n',
    'echo started\nexec nix-store --serve --store $(id)\n',
    'echo started\n' + 'x'.repeat(5000) + '\n',
  ];
  for (const input of bad) {
    const ssh = await run('ssh', rig.sshArgs(daemon, ['bash']), { input, timeoutMs: 20_000 });
    t.equal(ssh.code, 1, `${JSON.stringify(input.slice(0, 40))}: exit 1`);
    t.match(ssh.stderr, /^nix-hcloud-builder: command refused \(/, 'the reason on stderr');
    t.equal(ssh.stderr.trim().split('\n').length, 1, 'exactly one line');
    t.notMatch(ssh.stdout, /uid=/, 'nothing ran');
  }
  // EOF right after `echo started`: refused too.
  const eof = await run('ssh', rig.sshArgs(daemon, ['bash']), { input: 'echo started\nexec nix-daemon --stdio', timeoutMs: 20_000 });
  t.equal(eof.code, 1);
  t.match(eof.stderr, /ended before the exec line/);
  t.equal(daemon.proc.exitCode, null, 'the daemon is still running');
});
