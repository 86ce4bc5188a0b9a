#!/usr/bin/env python3
"""A hostile client that is not fedpeft (issue 13, item 8).

Drives a real `fedpeft coordinator` (the cloud) and a real `fedpeft edge`
with two real `fedpeft worker` processes behind it, all on 127.0.0.1 on
mutual TLS, with DP, FFA-LoRA and secure aggregation at the edge. An
independent client, written here against proto/fedpeft.proto with Debian's
python3-grpcio (stubs generated at run time), holds certificates of its own
from the same CA and tries, each checked for its gRPC status code and
message:

  at the cloud
    - a worker certificate registering with role EDGE (PERMISSION_DENIED,
      naming both roles);
    - calls on another participant's session id (PERMISSION_DENIED,
      "session belongs to");
    - GetStatus with a worker certificate (PERMISSION_DENIED; an operator's
      is answered);
    - from edge certificates it holds (a compromised edge): an upload whose
      tensor header declares more than limits.max_update_mb, one message
      larger than server.max_message_mb, a truncated upload (a header and
      half a tensor, then the end of the stream), and an upload of an
      FFA-LoRA lora_A (frozen: only lora_B trains and travels);
  at the edge, as one of the round's secure-aggregation clients
    - garbage bytes as its ADVERTISE message, a valid ADVERTISE resent
      (replayed), that ADVERTISE replayed as the SHARE_KEYS step's message,
      and an ADVERTISE in another client's name.

Then: each refusal has its reason in the log of the server that refused it,
the cloud ran every configured round (`round N/N done`, every round
aggregated), every fedpeft process exits 0, LATEST is the last round, the
FFA-frozen lora_A tensors of the last checkpoint are bit-identical to round
1's, every checkpoint value is finite, and `fedpeft export --checkpoint`
exports it.

Usage: hostile_client.py BUILD/fedpeft        (ctest: HostileClient.*)
Exit: 0 passed, 1 failed, 77 skipped (no python3 grpc / stub generator).
"""

import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array

SKIP = 77
SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PROTO_DIR = os.path.join(SOURCE, "proto")

# The whole run, every wait included; ctest's TIMEOUT is above it.
BUDGET_S = 540
ROUNDS = 4


def skip(reason):
    print("SKIPPED: " + reason, flush=True)
    sys.exit(SKIP)


def import_grpc():
    """grpc from this interpreter, or from Debian's python3 (the packages
    install there; a python3 earlier on PATH, e.g. pyenv's, does not see
    them)."""
    try:
        import grpc  # noqa: F401
        return
    except ImportError:
        pass
    system = "/usr/bin/python3"
    if (os.environ.get("FEDPEFT_HOSTILE_REEXEC") != "1" and
            os.path.exists(system) and
            os.path.realpath(sys.executable) != os.path.realpath(system)):
        os.environ["FEDPEFT_HOSTILE_REEXEC"] = "1"
        os.execv(system, [system] + sys.argv)
    skip("no python3 grpc module (Debian: python3-grpcio python3-protobuf "
         "python3-grpc-tools; scripts/setup.sh installs them)")


def generate_stubs(out_dir):
    """fedpeft_pb2 / fedpeft_pb2_grpc from proto/fedpeft.proto into
    out_dir: with grpc_tools.protoc (python3-grpc-tools), else protoc with
    Debian's grpc_python_plugin (protobuf-compiler-grpc). Returns the two
    modules; skips when no generator works."""
    proto = os.path.join(PROTO_DIR, "fedpeft.proto")
    attempts = [
        ("grpc_tools.protoc",
         [sys.executable, "-m", "grpc_tools.protoc", "-I" + PROTO_DIR,
          "--python_out=" + out_dir, "--grpc_python_out=" + out_dir, proto]),
    ]
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    if protoc and plugin:
        attempts.append(
            ("protoc + grpc_python_plugin",
             [protoc, "-I" + PROTO_DIR, "--python_out=" + out_dir,
              "--grpc_out=" + out_dir,
              "--plugin=protoc-gen-grpc=" + plugin, proto]))
    errors = []
    for name, cmd in attempts:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append("%s: %s" % (name, e))
            continue
        if r.returncode != 0:
            errors.append("%s: exit %d: %s" % (name, r.returncode,
                                               r.stderr.strip()[-300:]))
            continue
        # Check the generated code imports with this protobuf runtime
        # before using it (an old generator's code may not).
        check = subprocess.run(
            [sys.executable, "-c", "import fedpeft_pb2, fedpeft_pb2_grpc"],
            cwd=out_dir, capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            errors.append("%s: generated code does not import: %s" %
                          (name, check.stderr.strip()[-300:]))
            continue
        sys.path.insert(0, out_dir)
        import fedpeft_pb2
        import fedpeft_pb2_grpc
        print("stubs generated with %s" % name, flush=True)
        return fedpeft_pb2, fedpeft_pb2_grpc
    skip("cannot generate Python stubs from proto/fedpeft.proto: " +
         "; ".join(errors))


class Failures:
    def __init__(self):
        self.items = []
        self.passed = 0

    def check(self, ok, what):
        print(("ok    " if ok else "FAIL  ") + what, flush=True)
        if ok:
            self.passed += 1
        else:
            self.items.append(what)
        return ok


def pdeathsig_prefix():
    """setpriv (util-linux) so that the fedpeft processes die with this
    script however it ends (SIGKILL by a test timeout included); no Python
    code runs between fork and exec."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class Run:
    """The temp dir, the fedpeft processes it started, and the deadline."""

    def __init__(self, binary):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="fedpeft_hostile_")
        self.procs = {}  # name -> Popen
        self.deadline = time.monotonic() + BUDGET_S

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def left(self):
        return self.deadline - time.monotonic()

    def fedpeft(self, args, timeout=60):
        """Runs `fedpeft args` to completion; returns (exit code, output)."""
        r = subprocess.run([self.binary] + args, cwd=SOURCE,
                           capture_output=True, text=True,
                           timeout=min(timeout, max(1, self.left())))
        return r.returncode, r.stdout + r.stderr

    def spawn(self, name, args):
        log = open(self.path(name + ".log"), "wb")
        p = subprocess.Popen(pdeathsig_prefix() + [self.binary] + args,
                             cwd=SOURCE, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        log.close()
        self.procs[name] = p
        return p

    def wait_exit(self, name, timeout):
        """Exit code of process `name`, or None if it still runs."""
        try:
            return self.procs[name].wait(timeout=max(0.1, min(timeout,
                                                               self.left())))
        except subprocess.TimeoutExpired:
            return None

    def log(self, name):
        try:
            with open(self.path(name + ".log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_for(self, what, ready, timeout):
        """Polls ready() every 100 ms up to timeout (and the budget)."""
        until = time.monotonic() + min(timeout, max(0, self.left()))
        while time.monotonic() < until:
            v = ready()
            if v:
                return v
            time.sleep(0.1)
        v = ready()
        if not v:
            raise TimeoutError("timed out waiting for " + what)
        return v

    def wait_port(self, name, port_file, timeout=120):
        def ready():
            if self.procs[name].poll() is not None:
                raise RuntimeError("%s exited with %d before listening:\n%s" %
                                   (name, self.procs[name].returncode,
                                    self.log(name)[-3000:]))
            try:
                with open(port_file) as f:
                    text = f.read()
            except OSError:
                return None
            return int(text) if text.endswith("\n") else None
        return self.wait_for(name + "'s port file", ready, timeout)

    def stop_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---- configs ----------------------------------------------------------------

def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def coordinator_yaml(run, certs, names):
    return """\
server:
  address: 127.0.0.1:0
  port_file: {port}
  max_message_mb: 1           # one gRPC message at most (the hostile sends more)
  chunk_kb: 256
federation:
  id: hostile-test
  rounds: {rounds}
  min_available: {min_available}  # edge-0 and the hostile's three edges
  fraction: 1.0
  quorum: 0.2                 # the real edge's answer carries a round
  round_deadline_s: 90
  on_quorum_miss: skip
  heartbeat_interval_ms: 300
  worker_timeout_s: 3
  task_wait_ms: 1000
  shutdown_grace_s: 3
model:
  path: {source}/assets/stories260K
  threads: 1
peft:
  method: lora
  lora:
    r: 8
    alpha: 16
    target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
strategy:
  name: fedavg
train:
  local_steps: 4
  batch_size: 8
  lr: 0.004
dp:
  enabled: true
  clip_norm: 0.05
  noise_multiplier: 0.5
  placement: central
  population: 10
freezing:
  ffa: true                   # only lora_B trains and travels
secagg:
  enabled: true               # at the edge, over its workers
  setup_timeout_s: 6         # each key-agreement step
  unmask_timeout_s: 10
compression:
  bits: 8
checkpoint:
  dir: {ckpt}
  keep: 10
logging:
  level: info
  metrics_file: {metrics}
limits:
  max_update_mb: 1            # one upload at most (the hostile declares more)
tls:
  enabled: true
  ca: {certs}/ca.crt
  cert: {certs}/coordinator.crt
  key: {certs}/coordinator.key
  allowed_names: [{names}]
""".format(port=run.path("coordinator.port"), rounds=ROUNDS,
           min_available=4, source=SOURCE, ckpt=run.path("ckpt"),
           metrics=run.path("metrics.jsonl"), certs=certs,
           names=", ".join(names))


def edge_yaml(run, certs, cloud_port, names):
    return """\
edge:
  id: edge-0
upstream:
  address: 127.0.0.1:{cloud}
  task_wait_ms: 1000
  backoff_max_ms: 1000
server:
  address: 127.0.0.1:0
  port_file: {port}
federation:
  min_available: 3            # worker-0, worker-1 and the hostile's worker
  fraction: 1.0
  quorum: 0.3
  round_deadline_s: 60
  heartbeat_interval_ms: 300
  worker_timeout_s: 3
  task_wait_ms: 1000
  shutdown_grace_s: 3
model:
  path: {source}/assets/stories260K
  threads: 1
logging:
  level: info
tls:
  enabled: true
  ca: {certs}/ca.crt
  cert: {certs}/edge-0.crt
  key: {certs}/edge-0.key
  allowed_names: [{names}]
""".format(cloud=cloud_port, port=run.path("edge-0.port"), source=SOURCE,
           certs=certs, names=", ".join(names))


def worker_args(certs, i, edge_port):
    sets = ["worker.id=worker-%d" % i, "data.shard=%d/2" % i,
            "data.max_records=600", "data.max_seq_len=64",
            "server.address=127.0.0.1:%d" % edge_port,
            "server.task_wait_ms=1000", "server.backoff_max_ms=1000",
            "tls.ca=%s/ca.crt" % certs,
            "tls.cert=%s/worker-%d.crt" % (certs, i),
            "tls.key=%s/worker-%d.key" % (certs, i)]
    args = ["worker", "--config", "configs/tls/worker.yaml"]
    for s in sets:
        args += ["--set", s]
    return args


# ---- safetensors (checkpoint checks) -----------------------------------------

def read_safetensors(path):
    """name -> (dtype, shape, raw bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[base + b:base + e])
    return out


def all_finite_f32(raw):
    a = array("f")
    a.frombytes(raw)
    return all(math.isfinite(x) for x in a)


# ---- the hostile client --------------------------------------------------------

class Hostile:
    """gRPC channels with the hostile's certificates."""

    def __init__(self, pb, pb_grpc, certs, failures):
        import grpc
        self.grpc = grpc
        self.pb = pb
        self.pb_grpc = pb_grpc
        self.certs = certs
        self.f = failures
        self.channels = []
        with open(os.path.join(certs, "ca.crt"), "rb") as fh:
            self.ca = fh.read()

    def stub(self, port, name):
        """A Federation stub on 127.0.0.1:port with certificate `name`."""
        with open(os.path.join(self.certs, name + ".key"), "rb") as fh:
            key = fh.read()
        with open(os.path.join(self.certs, name + ".crt"), "rb") as fh:
            crt = fh.read()
        creds = self.grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=key, certificate_chain=crt)
        ch = self.grpc.secure_channel("127.0.0.1:%d" % port, creds)
        self.channels.append(ch)
        return self.pb_grpc.FederationStub(ch)

    def close(self):
        for ch in self.channels:
            ch.close()

    def call(self, fn, *args, **kw):
        """(reply, None) or (None, RpcError)."""
        kw.setdefault("timeout", 30)
        try:
            return fn(*args, **kw), None
        except self.grpc.RpcError as e:
            return None, e

    def expect_error(self, what, fn, args, codes, needles, **kw):
        """Calls fn(*args); checks it fails with one of `codes` and a
        message holding every string of `needles`. Returns the message."""
        reply, err = self.call(fn, *args, **kw)
        if err is None:
            self.f.check(False, "%s: refused (it was answered: %s)" %
                         (what, " ".join(str(reply).split())))
            return ""
        code, msg = err.code(), err.details() or ""
        codes = codes if isinstance(codes, (list, tuple)) else [codes]
        ok = code in codes and all(n in msg for n in needles)
        self.f.check(ok, "%s: %s \"%s\"" % (what, code.name, msg))
        return msg

    def profile(self, name, role):
        pb = self.pb
        return pb.RegisterRequest(profile=pb.WorkerProfile(
            worker_id=name, threads=1, ram_bytes=1 << 30,
            tokens_per_second=1000.0, num_samples=100, version="hostile",
            role=role, seq_len=64))

    def register(self, stub, name, role):
        reply, err = self.call(stub.Register, self.profile(name, role))
        if err is not None:
            raise RuntimeError("%s could not register: %s %s" %
                               (name, err.code().name, err.details()))
        return reply.session_id


class Heartbeats:
    """Keeps sessions alive (every 300 ms) until stopped one by one."""

    def __init__(self, hostile):
        self.h = hostile
        self.stops = {}
        self.threads = []

    def start(self, stub, session, name):
        stop = threading.Event()
        self.stops[name] = stop
        pb = self.h.pb

        def beat():
            while not stop.is_set():
                self.h.call(stub.Heartbeat,
                            pb.HeartbeatRequest(session_id=session),
                            timeout=5)
                stop.wait(0.3)
        t = threading.Thread(target=beat, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self, name):
        if name in self.stops:
            self.stops[name].set()

    def stop_all(self):
        for s in self.stops.values():
            s.set()
        for t in self.threads:
            t.join(timeout=6)


def wait_task(h, run, stub, session, name, timeout):
    """Long-polls GetTask until a TRAIN task (bounded)."""
    pb = h.pb
    until = time.monotonic() + min(timeout, max(0, run.left()))
    while time.monotonic() < until:
        task, err = h.call(stub.GetTask,
                           pb.TaskRequest(session_id=session, wait_ms=1000),
                           timeout=10)
        if err is not None:
            if err.code() in (h.grpc.StatusCode.UNAVAILABLE,
                              h.grpc.StatusCode.DEADLINE_EXCEEDED):
                time.sleep(0.2)
                continue
            raise RuntimeError("%s GetTask: %s %s" %
                               (name, err.code().name, err.details()))
        if task.kind == pb.Task.TRAIN:
            return task
        if task.kind == pb.Task.SHUTDOWN:
            raise RuntimeError("%s was told SHUTDOWN before any task" % name)
    raise TimeoutError("%s got no TRAIN task within %ds" % (name, timeout))


def download_specs(h, stub, session, task):
    """The global adapter's tensor headers for `task`: name -> header."""
    pb = h.pb
    specs = {}
    for chunk in stub.DownloadAdapter(
            pb.DownloadRequest(session_id=session, round=task.round,
                               adapter_version=task.adapter_version),
            timeout=60):
        if chunk.HasField("header"):
            specs[chunk.header.name] = chunk.header
    return specs


def upload_stream(pb, session, task, tensors):
    """An edge's DELTA upload: the header, then `tensors`, a list of
    TensorChunk (headers and data as the attack wants them)."""
    header = pb.UpdateHeader(
        session_id=session, round=task.round, num_samples=1, train_loss=3.0,
        eval_loss=float("nan"), num_tensors=sum(
            1 for c in tensors if c.HasField("header")),
        kind=pb.UpdateHeader.DELTA, workers=1, edge_rounds=1,
        users_selected=1, users_alive=1, unclipped=1.0)
    yield pb.UploadMessage(header=header)
    for c in tensors:
        yield pb.UploadMessage(chunk=c)


def f32_header(pb, name, shape):
    n = 1
    for d in shape:
        n *= d
    return pb.TensorChunk(header=pb.TensorHeader(
        name=name, dtype=pb.DTYPE_F32, shape=list(shape),
        codec=pb.CODEC_RAW, encoded_bytes=4 * n)), 4 * n


def secagg_advertise(session_id, sender):
    """security/secagg_messages.h: "FSAG" | version 1 | type 1 (advertise) |
    session u64 | sender u32 | encryption key 32 | masking key 32."""
    return (b"FSAG" + bytes([1, 1]) + struct.pack("<QI", session_id, sender) +
            os.urandom(32) + os.urandom(32))


# ---- the scenario --------------------------------------------------------------

def main():
    if len(sys.argv) != 2:
        print("usage: hostile_client.py PATH/TO/fedpeft", file=sys.stderr)
        return 2
    binary = os.path.abspath(sys.argv[1])
    if not os.access(binary, os.X_OK):
        print("not an executable: " + binary, file=sys.stderr)
        return 2
    import_grpc()
    t_start = time.monotonic()
    run = Run(binary)
    f = Failures()
    stubs_dir = run.path("stubs")
    os.makedirs(stubs_dir)
    try:
        pb, pb_grpc = generate_stubs(stubs_dir)
    except SystemExit:  # skipped: nothing ran yet
        shutil.rmtree(run.dir, ignore_errors=True)
        raise
    import grpc
    SC = grpc.StatusCode
    h = None
    beats = None
    keep = False
    try:
        # -- certificates: the federation's and the hostile's, one CA -----
        certs = run.path("certs")
        rc, out = run.fedpeft(["certs", "init", "--out", certs])
        if rc != 0:
            raise RuntimeError("certs init: " + out)
        issued = [("coordinator", "coordinator"), ("edge", "edge-0"),
                  ("worker", "worker-0"), ("worker", "worker-1"),
                  ("operator", "operator"),
                  # the hostile's
                  ("worker", "rogue-worker"), ("edge", "rogue-edge-big"),
                  ("edge", "rogue-edge-msg"), ("edge", "rogue-edge-trunc"),
                  ("edge", "rogue-edge-frozen")]
        for role, name in issued:
            rc, out = run.fedpeft(["certs", "issue", "--role", role, "--name",
                                   name, "--ca", certs, "--out", certs])
            if rc != 0:
                raise RuntimeError("certs issue %s %s: %s" % (role, name, out))
        names = [n for _, n in issued if n != "coordinator"]

        # -- the cloud ------------------------------------------------------
        write(run.path("coordinator.yaml"), coordinator_yaml(run, certs, names))
        run.spawn("coordinator", ["coordinator", "--config",
                                  run.path("coordinator.yaml")])
        cloud = run.wait_port("coordinator", run.path("coordinator.port"))
        print("coordinator on 127.0.0.1:%d" % cloud, flush=True)

        h = Hostile(pb, pb_grpc, certs, f)
        beats = Heartbeats(h)
        as_worker = h.stub(cloud, "rogue-worker")

        # 1. A worker certificate registering as an edge.
        h.expect_error(
            "worker certificate registering as EDGE at the cloud",
            as_worker.Register, (h.profile("rogue-worker", pb.ROLE_EDGE),),
            SC.PERMISSION_DENIED,
            ["asks to register as edge", "certificate's role is worker"])

        # The hostile's edges (a compromised edge's certificates) register;
        # the cloud's first round waits for them (min_available 4).
        rogue = {}
        for name in ("rogue-edge-big", "rogue-edge-msg", "rogue-edge-trunc"):
            stub = h.stub(cloud, name)
            session = h.register(stub, name, pb.ROLE_EDGE)
            rogue[name] = (stub, session)
            beats.start(stub, session, name)

        # 2. Another participant's session id, with the hostile's own
        # (admitted) worker certificate.
        victim = rogue["rogue-edge-big"][1]
        for call, req in (
                ("Heartbeat", pb.HeartbeatRequest(session_id=victim)),
                ("GetTask", pb.TaskRequest(session_id=victim, wait_ms=10))):
            h.expect_error(
                "%s on another participant's session id" % call,
                getattr(as_worker, call), (req,), SC.PERMISSION_DENIED,
                ["session belongs to 'rogue-edge-big'",
                 "certificate of 'rogue-worker'"])
        # ... and `status` needs an operator certificate.
        h.expect_error("GetStatus with a worker certificate",
                       as_worker.GetStatus, (pb.StatusRequest(),),
                       SC.PERMISSION_DENIED, ["needs an operator certificate"])
        st, err = h.call(h.stub(cloud, "operator").GetStatus,
                         pb.StatusRequest())
        f.check(err is None and st.federation_id == "hostile-test",
                "GetStatus with the operator's certificate is answered")

        # -- the edge and its real workers ------------------------------------
        write(run.path("edge.yaml"), edge_yaml(run, certs, cloud, names))
        run.spawn("edge-0", ["edge", "--config", run.path("edge.yaml")])
        edge = run.wait_port("edge-0", run.path("edge-0.port"))
        print("edge-0 on 127.0.0.1:%d" % edge, flush=True)
        for i in range(2):
            run.spawn("worker-%d" % i, worker_args(certs, i, edge))
        # The hostile's worker joins the edge; its first round waits for
        # three workers, so it is one of the round's secure-aggregation
        # clients.
        at_edge = h.stub(edge, "rogue-worker")
        w_session = h.register(at_edge, "rogue-worker", pb.ROLE_WORKER)
        beats.start(at_edge, w_session, "rogue-worker")

        # -- secure aggregation at the edge (its round 1) ---------------------
        # First: the key agreement's first step closes setup_timeout_s after
        # the edge round opens. The cloud's round 1 waits for the edge.
        wtask = wait_task(h, run, at_edge, w_session, "rogue-worker", 180)
        f.check(wtask.HasField("secagg") and wtask.secagg.num_clients == 3,
                "the hostile's worker is one of 3 secure-aggregation clients "
                "of edge round %d" % wtask.round)
        sa = wtask.secagg
        req = pb.SecAggRequest

        def secagg(step, message):
            return (req(session_id=w_session, round=wtask.round, step=step,
                        message=message, wait_ms=0),)
        refused = "secure aggregation message from 'rogue-worker'"
        # 4a. Garbage as its ADVERTISE.
        h.expect_error("garbage SecAgg ADVERTISE", at_edge.SecAgg,
                       secagg(req.ADVERTISE,
                              b"\x00garbage\xff" + os.urandom(53)),
                       [SC.INVALID_ARGUMENT, SC.FAILED_PRECONDITION],
                       [refused])
        # 4b. An ADVERTISE in another client's name.
        other = (sa.index + 1) % sa.num_clients
        h.expect_error("SecAgg ADVERTISE in another client's name",
                       at_edge.SecAgg,
                       secagg(req.ADVERTISE,
                              secagg_advertise(sa.session_id, other)),
                       [SC.INVALID_ARGUMENT, SC.FAILED_PRECONDITION],
                       [refused, "is not the caller's id"])
        # 4c. A well-formed ADVERTISE is taken ...
        advert = secagg_advertise(sa.session_id, sa.index)
        r, err = h.call(at_edge.SecAgg, *secagg(req.ADVERTISE, advert))
        f.check(err is None, "a well-formed SecAgg ADVERTISE is taken%s" %
                ("" if err is None else
                 ": %s %s" % (err.code().name, err.details())))
        # ... and the same bytes again are a replay,
        h.expect_error("replayed SecAgg ADVERTISE", at_edge.SecAgg,
                       secagg(req.ADVERTISE, advert),
                       [SC.INVALID_ARGUMENT, SC.FAILED_PRECONDITION],
                       [refused])
        # ... and so are they as the next step's message.
        h.expect_error("ADVERTISE replayed as the SHARE_KEYS message",
                       at_edge.SecAgg, secagg(req.SHARE_KEYS, advert),
                       [SC.INVALID_ARGUMENT, SC.FAILED_PRECONDITION],
                       [refused])
        # It shares no keys: the edge leaves it out after setup_timeout_s.
        beats.stop("rogue-worker")

        # -- uploads at the cloud (round 1) ------------------------------------
        tasks = {}
        for name, (stub, session) in rogue.items():
            tasks[name] = wait_task(h, run, stub, session, name, 180)
        print("cloud round %d: the hostile's edges have their tasks" %
              tasks["rogue-edge-big"].round, flush=True)
        stub, session = rogue["rogue-edge-big"]
        specs = download_specs(h, stub, session, tasks["rogue-edge-big"])
        lora_b = sorted(n for n in specs if ".lora_B." in n)
        lora_a = sorted(n for n in specs if ".lora_A." in n)
        f.check(len(lora_b) > 0 and len(lora_a) > 0,
                "the download names lora_A and lora_B tensors (%d, %d)" %
                (len(lora_a), len(lora_b)))
        b_name = lora_b[0]
        b_shape = list(specs[b_name].shape)

        # 3a. A tensor header declaring more than limits.max_update_mb.
        big, big_bytes = f32_header(pb, b_name, [b_shape[0], 1 << 13])
        stub, session = rogue["rogue-edge-big"]
        h.expect_error(
            "upload declaring %d bytes (limit 1 MiB)" % big_bytes,
            stub.UploadUpdate,
            (upload_stream(pb, session, tasks["rogue-edge-big"], [big]),),
            [SC.INVALID_ARGUMENT, SC.RESOURCE_EXHAUSTED],
            ["more than max_total_bytes"])
        beats.stop("rogue-edge-big")

        # 3b. One message larger than server.max_message_mb.
        hdr, nbytes = f32_header(pb, b_name, b_shape)
        huge = pb.TensorChunk(data=pb.TensorData(data=b"\0" * (3 << 19)))
        stub, session = rogue["rogue-edge-msg"]
        h.expect_error(
            "upload with a 1.5 MiB message (limit 1 MiB)",
            stub.UploadUpdate,
            (upload_stream(pb, session, tasks["rogue-edge-msg"],
                           [hdr, huge]),),
            [SC.RESOURCE_EXHAUSTED, SC.INVALID_ARGUMENT], [])
        beats.stop("rogue-edge-msg")

        # 3c. Truncated: a header, half the tensor, then the end.
        half = pb.TensorChunk(data=pb.TensorData(data=b"\0" * (nbytes // 2)))
        stub, session = rogue["rogue-edge-trunc"]
        h.expect_error(
            "truncated upload (%d of %d bytes, then WritesDone)" %
            (nbytes // 2, nbytes),
            stub.UploadUpdate,
            (upload_stream(pb, session, tasks["rogue-edge-trunc"],
                           [hdr, half]),),
            SC.INVALID_ARGUMENT,
            ["stream ended after %d of its %d bytes" % (nbytes // 2, nbytes)])
        beats.stop("rogue-edge-trunc")

        # -- a frozen tensor (FFA-LoRA's lora_A), in a later cloud round -------
        run.wait_for("round 1/%d done" % ROUNDS,
                     lambda: "round 1/%d done" % ROUNDS in
                     run.log("coordinator"), 240)
        stub = h.stub(cloud, "rogue-edge-frozen")
        session = h.register(stub, "rogue-edge-frozen", pb.ROLE_EDGE)
        beats.start(stub, session, "rogue-edge-frozen")
        ftask = wait_task(h, run, stub, session, "rogue-edge-frozen", 240)
        f.check(ftask.train.train_b_only,
                "cloud round %d: the task says FFA-LoRA (train_b_only)" %
                ftask.round)
        a_name = lora_a[0]
        a_hdr, a_bytes = f32_header(pb, a_name, list(specs[a_name].shape))
        a_data = pb.TensorChunk(data=pb.TensorData(
            data=struct.pack("<f", 0.25) * (a_bytes // 4)))
        h.expect_error(
            "upload of the FFA-frozen '%s'" % a_name, stub.UploadUpdate,
            (upload_stream(pb, session, ftask, [a_hdr, a_data]),),
            [SC.INVALID_ARGUMENT, SC.FAILED_PRECONDITION],
            [a_name])
        beats.stop("rogue-edge-frozen")
        attack_round = ftask.round

        # -- the federation goes on ----------------------------------------------
        code = run.wait_exit("coordinator", 360)
        f.check(code == 0, "the coordinator exits 0 (got %s)" % code)
        for name in ("edge-0", "worker-0", "worker-1"):
            code = run.wait_exit(name, 60)
            f.check(code == 0, "%s exits 0 (got %s)" % (name, code))

        clog = run.log("coordinator")
        elog = run.log("edge-0")
        f.check("round %d/%d done" % (ROUNDS, ROUNDS) in clog,
                "the cloud logs 'round %d/%d done'" % (ROUNDS, ROUNDS))
        rows = []
        try:
            with open(run.path("metrics.jsonl")) as fh:
                rows = [json.loads(l) for l in fh if l.strip()]
        except (OSError, ValueError) as e:
            f.check(False, "metrics.jsonl reads: %s" % e)
        f.check(len(rows) == ROUNDS and
                all(r.get("aggregated") for r in rows),
                "metrics: %d rounds, every one aggregated (%s)" %
                (ROUNDS, [(r.get("round"), r.get("aggregated"),
                           r.get("rejected")) for r in rows]))
        if rows:
            f.check(rows[0].get("rejected", 0) >= 2,
                    "metrics: round 1 counts the rejected uploads (%s)" %
                    rows[0].get("rejected"))

        # Every refusal has its reason in the refusing server's log.
        expected_lines = [
            ("cloud", clog, r"Register of 'rogue-worker' as edge with a "
             r"certificate of role worker: refused"),
            ("cloud", clog, r"Heartbeat on the session of 'rogue-edge-big' "
             r"came with the certificate of 'rogue-worker': refused"),
            ("cloud", clog, r"GetTask on the session of 'rogue-edge-big' "
             r"came with the certificate of 'rogue-worker': refused"),
            ("cloud", clog, r"GetStatus from 'rogue-worker' \(role worker\): "
             r"refused"),
            ("cloud", clog, r"rejected upload from 'rogue-edge-big' for round "
             r"\d+: .*more than max_total_bytes"),
            ("cloud", clog, r"rejected upload from 'rogue-edge-msg' for round "
             r"\d+: "),
            ("cloud", clog, r"rejected upload from 'rogue-edge-trunc' for "
             r"round \d+: .*stream ended after"),
            ("cloud", clog, r"rejected upload from 'rogue-edge-frozen' for "
             r"round %d: .*lora_A" % attack_round),
            ("edge", elog, r"secure aggregation message from 'rogue-worker' "
             r"refused: .*"),
            ("edge", elog, r"secure aggregation message from 'rogue-worker' "
             r"refused: sender \d+ is not the caller's id"),
            ("edge", elog, r"secure aggregation message from 'rogue-worker' "
             r"refused: .*(advertised keys twice|late or early message)"),
            ("edge", elog, r"'rogue-worker' left out of secure aggregation"),
        ]
        for where, text, pattern in expected_lines:
            m = re.search(pattern, text)
            f.check(m is not None, "%s log: %s" %
                    (where, m.group(0)[:240] if m else "/" + pattern + "/"))
        n_refused = len(re.findall(
            r"secure aggregation message from 'rogue-worker' refused", elog))
        f.check(n_refused >= 4, "edge log: %d refused SecAgg messages of the "
                "hostile (4 sent)" % n_refused)
        # The edge's secure sum in the attacked round still came together.
        f.check(re.search(r"edge round 1: secure aggregation: sum of 2 masked "
                          r"updates recovered", elog) is not None,
                "edge round 1 recovered the sum of the 2 real workers")

        # The checkpoints are intact.
        ckpt = run.path("ckpt")
        latest = ""
        try:
            with open(os.path.join(ckpt, "LATEST")) as fh:
                latest = fh.read().strip()
        except OSError:
            pass
        f.check(latest == "round-%06d" % ROUNDS, "LATEST is %r" % latest)
        first = read_safetensors(os.path.join(ckpt, "round-000001",
                                              "global.safetensors"))
        last = read_safetensors(os.path.join(ckpt, latest,
                                             "global.safetensors"))
        f.check(sorted(first) == sorted(last) and len(last) == len(specs),
                "the last checkpoint holds the %d adapter tensors" %
                len(specs))
        f.check(all(dt == "F32" and all_finite_f32(raw)
                    for dt, _, raw in last.values()),
                "every value of the last checkpoint is finite F32")
        same_a = all(first[n][2] == last[n][2] for n in lora_a if n in first
                     and n in last)
        f.check(same_a, "the FFA-frozen lora_A tensors of %s are "
                "bit-identical to round 1's" % latest)
        moved_b = any(first[n][2] != last[n][2] for n in lora_b if n in first
                      and n in last)
        f.check(moved_b, "lora_B moved between round 1 and %s" % latest)
        rc, out = run.fedpeft(["export", "--checkpoint", ckpt, "--out",
                               run.path("adapter")], timeout=120)
        f.check(rc == 0 and os.path.exists(
            run.path("adapter", "adapter_model.safetensors")),
            "fedpeft export --checkpoint exits 0 (got %d)" % rc)
    except Exception as e:  # a timeout, a process that died, ...
        f.check(False, "scenario stopped: %s: %s" % (type(e).__name__, e))
    finally:
        if beats:
            beats.stop_all()
        if h:
            h.close()
        run.stop_all()
        seconds = time.monotonic() - t_start
        if f.items:
            keep = True
            for name in ("coordinator", "edge-0", "worker-0", "worker-1"):
                text = run.log(name)
                print("==== %s.log (last 6000 characters)\n%s" %
                      (name, text[-6000:]), flush=True)
        for what in f.items:
            print("failed: " + what, flush=True)
        print("%.1f s; %s" %
              (seconds,
               ("logs kept in " + run.dir) if keep else "temp dir removed"),
              flush=True)
        print("hostile_client: %d passed, %d failed" %
              (f.passed, len(f.items)), flush=True)
        if not keep:
            shutil.rmtree(run.dir, ignore_errors=True)
    return 1 if f.items else 0


if __name__ == "__main__":
    sys.exit(main())
