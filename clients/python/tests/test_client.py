"""The client against a stand-in node (protocol v2, in a thread): buffers,
tensors (CPU, and CUDA when there is a GPU), the DDP hook's future, and what
the hello says about the trainers sharing a node.

    python3 -m unittest discover -s clients/python/tests

The stand-in plays a two-member job whose other member holds the same data,
so a sum doubles and a mean is unchanged. The real node is tested by
test/local.test.ts.
"""
import array
import mmap
import os
import socket
import struct
import sys
import tempfile
import threading
import json
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ainftp  # noqa: E402
from ainftp import protocol  # noqa: E402

try:
    import torch
except ImportError:
    torch = None


def quantize(xs, bits):
    """What the stand-in node's quantizer makes of xs: nearest on a grid of
    max|x| / (2^(bits-1) - 1) (16 bits: unchanged)."""
    if bits >= 16:
        return list(xs)
    top = max((abs(x) for x in xs), default=0.0)
    step = top / (2 ** (bits - 1) - 1) if top else 1.0
    return [round(x / step) * step for x in xs]


class FakeNode:
    """size 2: a sum doubles, a mean is unchanged; size 1: both unchanged.
    bits < 16: the data is quantized first (see quantize()), and a request
    asking for the residual gets x - quantize(x)."""

    def __init__(self, path, size=2, bits=16):
        self.path = path
        self.size = size
        self.bits = bits
        self.hellos = []
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(4)
        self.rounds = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        maps = {}
        send = lambda m: conn.sendall(protocol.encode(m))  # noqa: E731
        try:
            hello = protocol.read_frame(conn)
            self.hellos.append(hello)
            if hello.get("version") != protocol.VERSION:
                return send({"type": "hello", "status": "version_mismatch", "message": "no", "version": protocol.VERSION})
            if hello.get("bits", self.bits) != self.bits:
                return send({"type": "hello", "status": "bad_request", "bits": self.bits,
                             "message": f"this trainer asks for {hello['bits']}-bit gradients, but this node's job runs at {self.bits} bits: "
                                        f"start the swarm with --bits {hello['bits']}"})
            send({"type": "hello", "status": "ok", "job": 3, "rank": 0, "size": self.size, "peers": ["a", "b"][:self.size],
                  "local_size": hello.get("local_size"), "world": None, "bits": self.bits})
            while True:
                m = protocol.read_frame(conn)
                reply = {"type": m["type"], "seq": m.get("seq"), "status": "ok"}
                if m["type"] == "register":
                    fd = os.open(m["path"], os.O_RDWR)
                    maps[len(maps) + 1] = mmap.mmap(fd, m["bytes"])
                    os.close(fd)
                    reply["buffer"] = len(maps)
                elif m["type"] == "allreduce":
                    mm = maps[m["buffer"]]
                    lo, n = 4 * m["offset"], m["count"]
                    xs = struct.unpack_from(f"<{n}f", mm, lo)
                    qs = quantize(xs, self.bits)
                    if "residual_offset" in m:
                        struct.pack_into(f"<{n}f", mm, 4 * m["residual_offset"], *(x - q for x, q in zip(xs, qs)))
                    k = 2 if m["op"] == "sum" and self.size == 2 else 1
                    struct.pack_into(f"<{n}f", mm, lo, *(k * q for q in qs))
                    self.rounds.append(m["round"])
                    reply["world"] = self.size  # the census: one trainer per node
                elif m["type"] == "bye":
                    send(reply)
                    return
                send(reply)
        except protocol.ConnectionLost:
            pass
        finally:
            conn.close()

    def close(self):
        self.srv.close()


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.node = FakeNode(os.path.join(self.dir, "n.sock"))
        self.client = ainftp.connect(socket=self.node.path, timeout=5)

    def tearDown(self):
        ainftp.close()
        self.node.close()

    def test_buffer_protocol_and_rounds(self):
        x = array.array("f", [1.0, -2.5, 4.0])
        self.assertIs(ainftp.allreduce(x), x)
        self.assertEqual(list(x), [2.0, -5.0, 8.0])
        ainftp.allreduce(x, op="mean")
        self.assertEqual(list(x), [2.0, -5.0, 8.0])
        self.assertEqual(self.node.rounds, [0, 1])
        self.assertEqual((self.client.rank, self.client.size, self.client.job), (0, 2, 3))
        mine = [f for f in os.listdir("/dev/shm") if f.startswith(f"ainftp-3-{os.getpid()}-")]
        self.assertEqual(mine, [])  # unlinked once registered

    @unittest.skipIf(torch is None, "no torch")
    def test_cpu_tensor_non_contiguous(self):
        t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
        want = t * 2
        ainftp.allreduce(t)
        self.assertTrue(torch.equal(t, want))
        with self.assertRaises(TypeError):
            ainftp.allreduce(torch.zeros(3, dtype=torch.float64))

    @unittest.skipIf(torch is None or not torch.cuda.is_available(), "no CUDA")
    def test_cuda_tensor_staged(self):
        t = torch.linspace(-1, 1, 3_000_000, device="cuda")
        want = t * 2
        ainftp.allreduce(t)
        self.assertEqual(t.device.type, "cuda")
        self.assertTrue(torch.equal(t, want))

    def _hook(self, device):
        import ainftp.torch as at

        class Bucket:  # what DDP hands a hook
            def __init__(self, t):
                self.t = t

            def buffer(self):
                return self.t

        state = at.HookState()
        futs = [at.comm_hook(state, Bucket(torch.full((1000 + k,), float(k), device=device))) for k in range(3)]
        for k, f in enumerate(futs):
            v = f.wait()
            self.assertEqual(v.device.type, device)
            self.assertTrue(torch.equal(v, torch.full((1000 + k,), float(k), device=device)))  # mean of equal values
        self.assertEqual(len(state.durations), 3)
        self.assertIsNone(state.error)

    @unittest.skipIf(torch is None, "no torch")
    def test_hook_future_cpu(self):
        self._hook("cpu")

    @unittest.skipIf(torch is None or not torch.cuda.is_available(), "no CUDA")
    def test_hook_future_cuda(self):
        self._hook("cuda")


class TrainersPerHostTest(unittest.TestCase):
    def setUp(self):
        self.node = FakeNode(os.path.join(tempfile.mkdtemp(), "n.sock"))
        self.saved = {k: os.environ.pop(k, None) for k in ("LOCAL_WORLD_SIZE", "LOCAL_RANK", "WORLD_SIZE", "SLURM_NTASKS_PER_NODE",
                                                             "SLURM_LOCALID", "SLURM_NTASKS")}

    def tearDown(self):
        for k, v in self.saved.items():
            if v is not None:
                os.environ[k] = v
            else:
                os.environ.pop(k, None)
        self.node.close()

    def test_hello_says_local_size_rank_and_world(self):
        from ainftp import session
        with session.connect(socket=self.node.path, timeout=5, local_size=4, local_rank=3, world=8) as c:
            self.assertEqual((c.local_size, c.local_rank, c.declared_world, c.world), (4, 3, 8, None))
        os.environ.update(LOCAL_WORLD_SIZE="2", LOCAL_RANK="1", WORLD_SIZE="6")
        with session.connect(socket=self.node.path, timeout=5) as c:
            c.allreduce(array.array("f", [1.0]))
            self.assertEqual(c.world, 2)  # from the allreduce's answer
        for k in ("LOCAL_WORLD_SIZE", "LOCAL_RANK", "WORLD_SIZE"):
            del os.environ[k]
        with session.connect(socket=self.node.path, timeout=5):
            pass
        got = [{k: h.get(k) for k in ("version", "local_size", "local_rank", "world")} for h in self.node.hellos]
        self.assertEqual(got, [{"version": 3, "local_size": 4, "local_rank": 3, "world": 8},
                               {"version": 3, "local_size": 2, "local_rank": 1, "world": 6},
                               {"version": 3, "local_size": 1, "local_rank": None, "world": None}])

    @unittest.skipIf(torch is None or not torch.distributed.is_available(), "no torch.distributed")
    def test_hook_checks_the_ddp_world(self):
        import torch.distributed as dist
        import ainftp.torch as at
        d = tempfile.mkdtemp()
        dist.init_process_group("gloo", init_method=f"file://{d}/store", rank=0, world_size=1)
        try:
            class Bucket:
                def buffer(self):
                    return torch.ones(4)

            from ainftp import session
            with session.connect(socket=self.node.path, timeout=5, world=2) as c:  # says 2 trainers, DDP has 1
                with self.assertRaisesRegex(RuntimeError, r"the DDP world has 1 ranks but the ainftp job has 2 trainers"):
                    at.comm_hook(at.HookState(client=c), Bucket())
        finally:
            dist.destroy_process_group()


class Bucket:
    """What DDP hands a hook: a flat tensor and its index."""

    def __init__(self, t, index=0):
        self.t = t
        self.i = index

    def buffer(self):
        return self.t

    def index(self):
        return self.i


class BitsTest(unittest.TestCase):
    """The job's bit width in the hello, the residual, error feedback in the hook."""

    def setUp(self):
        self.saved = os.environ.pop("AINFTP_BITS", None)
        self.nodes = []

    def tearDown(self):
        if self.saved is not None:
            os.environ["AINFTP_BITS"] = self.saved
        for n in self.nodes:
            n.close()

    def node(self, bits, size=2):
        n = FakeNode(os.path.join(tempfile.mkdtemp(), "n.sock"), size=size, bits=bits)
        self.nodes.append(n)
        return n

    def test_bits_checked_at_connect(self):
        from ainftp import session
        n = self.node(8)
        with session.connect(socket=n.path, timeout=5) as c:
            self.assertEqual(c.bits, 8)  # not asked: whatever the node runs
        with session.connect(socket=n.path, timeout=5, bits=8) as c:
            self.assertEqual(c.bits, 8)
        with self.assertRaises(ainftp.BadRequest) as e:
            session.connect(socket=n.path, timeout=5, bits=4)
        self.assertRegex(str(e.exception), r"asks for 4-bit gradients, but this node's job runs at 8 bits: start the swarm with --bits 4")
        os.environ["AINFTP_BITS"] = "16"
        with self.assertRaisesRegex(ainftp.BadRequest, r"runs at 8 bits"):
            session.connect(socket=n.path, timeout=5)
        del os.environ["AINFTP_BITS"]
        for bad in (3, 32, "eight", 8.0, True):
            with self.assertRaisesRegex(ValueError, r"is not one of 16, 8, 4 \(bits per gradient coordinate"):
                session.connect(socket=n.path, timeout=5, bits=bad)
        self.assertEqual([h.get("bits") for h in n.hellos], [None, 8, 4, 16])  # a bad width never reached the node
        with session.connect(socket=self.node(16).path, timeout=5) as c:
            self.assertEqual(c.bits, 16)

    def test_residual_of_a_buffer(self):
        from ainftp import session
        with session.connect(socket=self.node(4).path, timeout=5) as c:
            xs = [1.0, 0.3, -0.55, 0.1]
            x, r = array.array("f", xs), array.array("f", [9.0] * 4)
            c.allreduce(x, op="mean", residual=r)
            q = quantize(array.array("f", xs), 4)
            self.assertEqual(list(x), list(array.array("f", q)))
            for got, want in zip(r, (a - b for a, b in zip(array.array("f", xs), q))):
                self.assertAlmostEqual(got, want, places=6)
            self.assertGreater(max(map(abs, r)), 0.01)
            with self.assertRaisesRegex(ValueError, r"the residual has 3 floats, the data 4"):
                c.allreduce(x, residual=array.array("f", [0.0] * 3))

    def _steps(self, node_bits, steps, device="cpu", **state_kw):
        """The sum over `steps` of one bucket's all-reduced mean, its gradient the same each step."""
        import ainftp.torch as at
        g = torch.tensor([1.0, 0.3, -0.55, 0.1, 0.77, -0.21], device=device)
        with ainftp.session.connect(socket=self.node(node_bits).path, timeout=5) as c:
            state = at.HookState(client=c, **state_kw)
            total = torch.zeros_like(g)
            for _ in range(steps):
                total += at.comm_hook(state, Bucket(g.clone(), index=0)).wait()
            return state, total, g

    @unittest.skipIf(torch is None, "no torch")
    def test_error_feedback_keeps_the_error_from_piling_up(self):
        T = 50
        step = 1.0 / 7  # the 4-bit grid of max|g| = 1
        on, total_on, g = self._steps(4, T)
        self.assertTrue(on.error_feedback)  # on by default below 16 bits
        self.assertEqual(list(on.residuals), [0])
        err_on = (total_on - T * g).abs().max().item()
        off, total_off, _ = self._steps(4, T, error_feedback=False)
        self.assertEqual(off.residuals, {})
        err_off = (total_off - T * g).abs().max().item()
        # without: each step loses the same rounding error, T times; with: what is lost comes back next step
        self.assertGreater(err_off, T * 0.01)
        self.assertLess(err_on, step)
        self.assertLess(err_on * 20, err_off)
        at16, total16, _ = self._steps(16, 3)
        self.assertFalse(at16.error_feedback)  # off at 16 bits
        self.assertTrue(torch.equal(total16, 3 * g))
        forced, _, _ = self._steps(16, 2, error_feedback=True)
        self.assertTrue(torch.equal(forced.residuals[0], torch.zeros(6)))  # the node reports ~0 at 16 bits
        with self.assertRaisesRegex(ValueError, r"error_feedback='yes'"):
            ainftp.torch.HookState(error_feedback="yes")

    @unittest.skipIf(torch is None or not torch.cuda.is_available(), "no CUDA")
    def test_error_feedback_cuda(self):
        T = 50
        on, total_on, g = self._steps(4, T, device="cuda")
        off, total_off, _ = self._steps(4, T, device="cuda", error_feedback=False)
        self.assertEqual(on.residuals[0].device.type, "cuda")
        self.assertLess((total_on - T * g).abs().max().item() * 20, (total_off - T * g).abs().max().item())

    @unittest.skipIf(torch is None, "no torch")
    def test_error_feedback_per_bucket_and_reset_on_resize(self):
        import ainftp.torch as at
        with ainftp.session.connect(socket=self.node(4).path, timeout=5) as c:
            state = at.HookState(client=c)
            a, b = torch.tensor([1.0, 0.3, 0.1]), torch.tensor([2.0, -0.45])
            at.comm_hook(state, Bucket(a.clone(), 0)).wait()
            at.comm_hook(state, Bucket(b.clone(), 1)).wait()
            self.assertEqual(sorted(state.residuals), [0, 1])
            self.assertEqual(state.residuals[0].numel(), 3)
            self.assertEqual(state.residuals[1].numel(), 2)
            # bucket 1 rebuilt with another size: its old residual is dropped, not added
            t = torch.tensor([0.5, 0.5, 0.5, 0.5])
            out = at.comm_hook(state, Bucket(t.clone(), 1)).wait()
            self.assertTrue(torch.equal(out, torch.tensor(quantize([0.5] * 4, 4))))
            self.assertEqual(state.residuals[1].numel(), 4)


class ErrorsTest(unittest.TestCase):
    def test_version_mismatch_and_status_classes(self):
        d = tempfile.mkdtemp()
        node = FakeNode(os.path.join(d, "n.sock"))
        from ainftp import session
        saved, session.VERSION = session.VERSION, 99
        try:
            with self.assertRaises(ainftp.VersionMismatch):
                session.connect(socket=node.path, timeout=5)
        finally:
            session.VERSION = saved
            node.close()
        e = protocol.error_for({"status": "peer_missing", "message": "rank 3 left", "missing": [3]})
        self.assertIsInstance(e, ainftp.RoundFailed)
        self.assertEqual((e.status, e.missing), ("peer_missing", [3]))
        with self.assertRaises(ainftp.ConnectionLost):
            session.connect(socket=os.path.join(d, "none.sock"), timeout=0.2)


if __name__ == "__main__":
    unittest.main()
