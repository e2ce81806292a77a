"""A live takeover of a FUSE server, measured (bench/restart.sh).

While a reader streams a file through a descriptor held open and a prober
calls the mount without pause, five times a new server is started with
`--take-over CTL`; each time the figures are the time from its start to the
old server's exit and the longest read and probe during it, against a peer
from the same run: the median of plain calls (`--peer plain`) or the
longest call in as long a window just before (`--peer before`, for reads
that may wait on a GET whatever happens).

    takeover.py --mnt M --file F --open rw|ro --probe xattr|list --peer plain|before
                --ctl C --log L -- HUBFS OLD_PID SERVER_ARGS...
"""
import argparse, os, statistics, subprocess, threading, time

p = argparse.ArgumentParser()
for a in ("--mnt", "--file", "--ctl", "--log"):
    p.add_argument(a, required=True)
p.add_argument("--open", choices=("rw", "ro"), required=True)
p.add_argument("--probe", choices=("xattr", "list"), required=True)
p.add_argument("--peer", choices=("plain", "before"), required=True)
p.add_argument("rest", nargs=argparse.REMAINDER)
o = p.parse_args()
HUBFS, OLD, *ARGS = o.rest[1:] if o.rest[:1] == ["--"] else o.rest
OLD = int(OLD)
reads, probes, errors, stop = [], [], [], threading.Event()

def reader():
    # rw: served by the daemon (no passthrough); the cache dropped per pass.
    fd = os.open(o.file, os.O_RDWR if o.open == "rw" else os.O_RDONLY)
    off = 0
    while not stop.is_set():
        t = time.monotonic()
        try:
            n = len(os.pread(fd, 128 << 10, off))
        except OSError as e:
            errors.append(e); n = 0
        reads.append((t, time.monotonic() - t))
        off += n
        if n == 0:
            off = 0
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)

def probe():
    if o.probe == "xattr":
        os.getxattr(o.mnt, "user.hubfs.usage")
    else:
        os.listdir(os.path.dirname(o.file))
        os.stat(o.file)

def prober():
    while not stop.is_set():
        t = time.monotonic()
        try:
            probe()
        except OSError as e:
            errors.append(e)
        probes.append((t, time.monotonic() - t))
        time.sleep(0.001)

def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False

ts = [threading.Thread(target=f) for f in (reader, prober)]
for t in ts: t.start()
rounds, new = [], None
for r in range(5):
    time.sleep(1.0)
    t0 = time.monotonic()
    new = subprocess.Popen([HUBFS, "--log-level", "warn", *ARGS, "--take-over", o.ctl],
                           stderr=open(o.log, "a"), stdout=subprocess.DEVNULL)
    while alive(OLD):
        time.sleep(0.0005)
    t1 = time.monotonic()
    time.sleep(0.5)
    win = lambda xs: [d for (t, d) in xs if t0 - 0.01 <= t <= t1]
    if o.peer == "plain":
        peer = lambda xs: statistics.median(d for (t, d) in xs if t < t0 - 0.05)
    else:
        peer = lambda xs: max([d for (t, d) in xs if t0 - 0.05 - (t1 - t0) <= t < t0 - 0.05] or [0])
    rounds.append((t1 - t0, max(win(reads) or [0]), peer(reads), max(win(probes) or [0]), peer(probes)))
    OLD = new.pid
stop.set()
for t in ts: t.join()
med = lambda i: statistics.median(x[i] for x in rounds)
probe_name, probes_name = ("getxattr", "getxattrs") if o.probe == "xattr" else ("listing+stat", "listings+stats")
print(f"takeover (new process start -> old server gone), median of {len(rounds)}: {med(0)*1000:.0f} ms")
for name, i in (("128 KiB read", 1), (probe_name, 3)):
    if o.peer == "plain":
        print(f"longest {name} during it: {med(i)*1000:.1f} ms vs plain {name.split()[-1]} median {med(i+1)*1000:.2f} ms (x{med(i)/med(i+1):.0f})")
    else:
        print(f"longest {name} during it: {med(i)*1000:.1f} ms vs {med(i+1)*1000:.1f} ms in as long a window just before (x{med(i)/med(i+1):.1f})")
print(f"reads through the held descriptor: {len(reads)}, {probes_name}: {len(probes)}, errors: {len(errors)} {errors[:3]}")
new.terminate(); new.wait()
