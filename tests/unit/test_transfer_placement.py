"""Without a registry, only the nodes that run a service get its image: the built images
are pushed to one node and pinned before the plan; once the plan has placed the replicas
(before_apply) each image is copied to the nodes that run its service and to no other."""

from __future__ import annotations

from types import SimpleNamespace

from agent.wire.transfer import TransferInfo, loopback_ref
from orchestrator.app import pipeline as PL
from orchestrator.app import transfer as A
from orchestrator.app.pipeline import PipelineOptions, Seams
from orchestrator.core.progress import Progress
from orchestrator.io import transfer as X
from tests.unit.fakes import FakeBlobRegistry

WEB, API = loopback_ref("shop/web", "sha256:" + "a" * 64), loopback_ref("shop/api", "sha256:" + "b" * 64)


def test_needed_on_follows_the_placement():
    images = {"web": WEB, "api": API, "db": "busybox@sha256:" + "c" * 64, "worker": WEB}
    assert A.needed_on(images, ["n1", "n2", "n3"]) == {API: ["n1", "n2", "n3"], WEB: ["n1", "n2", "n3"]}
    placed = {"web": ["n2"], "worker": ["n3", "gone"], "api": ["n1"], "db": ["n1", "n2"]}
    assert A.needed_on(images, ["n1", "n2", "n3"], placed) == {API: ["n1"], WEB: ["n2", "n3"]}
    assert A.needed_on(images, ["n1"], {}) == {}  # nothing placed: nothing to copy


class Node:
    def __init__(self, name):
        self.name, self.calls = name, []
        self.conn = SimpleNamespace(transport=object())

    def call(self, op, args=None, **kw):
        self.calls.append(op)
        return TransferInfo(running=True, free_bytes=1 << 30).to_dict()


def _wire(monkeypatch, regs):
    class FakeForward:
        def __init__(self, transport, node):
            self.node, self.address = node, f"127.0.0.1:{1000 + len(regs)}"

        def close(self):
            pass

    monkeypatch.setattr(X, "Forward", FakeForward)
    monkeypatch.setattr(A, "_client", lambda fwd: regs[fwd.node])


class Reg(FakeBlobRegistry):
    """The calls copy_to_many makes, on top of FakeBlobRegistry's."""

    def open_blob(self, repo, digest):
        data = self.blobs[(repo, digest)]
        return SimpleNamespace(iter_content=lambda n: iter([data]), close=lambda: None)

    def upload_blob(self, repo, digest, chunks):
        self.put_blob(repo, digest, b"".join(chunks))


def test_deliver_copies_each_image_only_to_the_nodes_that_run_it(monkeypatch):
    regs = {n: Reg("127.0.0.1:47055") for n in ("n1", "n2", "n3")}
    web = regs["n1"].add_image("shop/web", [b"w" * 300])
    api = regs["n1"].add_image("shop/api", [b"a" * 300])
    _wire(monkeypatch, regs)
    env = SimpleNamespace(registry=SimpleNamespace(address=None))
    images = {"web": loopback_ref("shop/web", web), "api": loopback_ref("shop/api", api)}
    report = A.deliver(env, {n: Node(n) for n in regs}, images, Progress(), placement={"web": ["n2"], "api": ["n3"]})
    assert sorted((m.node, m.via) for m in report.moved) == [("n2", "n1"), ("n3", "n1")]
    assert ("shop/web", web) in regs["n2"].manifests and ("shop/api", web) not in regs["n3"].manifests
    assert ("shop/api", api) not in regs["n2"].manifests and ("shop/web", web) not in regs["n3"].manifests
    assert ("shop/api", api) in regs["n3"].manifests


def test_the_pipeline_pushes_before_the_plan_and_copies_after_it_by_placement(monkeypatch):
    calls, seeds = [], []

    def deliver(env, nodes, images, progress, **kw):
        calls.append((dict(images), kw.get("local"), kw.get("placement")))
        if kw.get("seeds") is not None:
            seeds.append(kw["seeds"])
        report = A.TransferReport(seconds=1.0)
        if kw.get("local"):
            report.pins = {"web": WEB}
            report.moved = [X.Moved(node="n1", digest=WEB.split("@")[1], via="engine")]
        else:
            report.moved = [X.Moved(node="n2", digest=WEB.split("@")[1], via="n1")]
        return report

    monkeypatch.setattr(A, "deliver", deliver)
    env = SimpleNamespace(name="xdev", registry=SimpleNamespace(address=None),
                          nodes=[SimpleNamespace(name=n, labels={}) for n in ("n1", "n2", "n3")])
    flow = PL._Flow("up", env, "shop", PipelineOptions(), Progress(), Seams(performer={"user": "t"}))
    flow.local_images = {"web": "shop/web:v1"}
    conn = SimpleNamespace(nodes={"n1": object(), "n2": object(), "n3": object()})
    prep = SimpleNamespace(images={"web": "shop/web:v1", "db": "busybox"},
                           workspace=SimpleNamespace(project=_project({"web": ["node.hostname != n1"]})))
    flow._transfer(conn, prep)
    assert prep.images["web"] == WEB and calls == [({}, {"web": "shop/web:v1"}, {})]  # pushed, copied nowhere
    assert seeds == [{"web": "n2"}]  # the first node web may run on
    dep = SimpleNamespace(units={("web", "n2"): None, ("db", "n1"): None, ("db", "n3"): None})
    flow._transfer_placed(conn, prep, dep)
    assert calls[1] == ({"web": WEB, "db": "busybox"}, None, {"web": ["n2"], "db": ["n1", "n3"]})
    assert [m.via for m in flow.transferred.moved] == ["engine", "n1"] and flow.transferred.seconds == 2.0


def _project(constraints):
    def svc(texts):
        return SimpleNamespace(deploy=SimpleNamespace(placement=SimpleNamespace(constraints=texts)) if texts else None)

    return SimpleNamespace(services={name: svc(texts) for name, texts in constraints.items()})


def test_a_built_image_is_pushed_to_the_first_node_its_constraints_allow():
    env = SimpleNamespace(nodes=[SimpleNamespace(name="n1", labels={"role": "db"}),
                                 SimpleNamespace(name="n2", labels={"role": "web"}),
                                 SimpleNamespace(name="n3", labels={"role": "web"})])
    project = _project({"web": ["node.labels.role == web"], "api": [], "db": ["node.labels.role == db"],
                        "none": ["node.hostname == elsewhere"]})
    assert A.seed_nodes(project, env, ["web", "api", "db", "none"]) == {"web": "n2", "api": "n1", "db": "n1"}


def test_deliver_pushes_each_built_image_to_its_seed(monkeypatch):
    regs = {n: Reg("127.0.0.1:47055") for n in ("n1", "n2")}
    _wire(monkeypatch, regs)
    pushed = []

    def push(engine, ref, forward, repository, tag, on_layer):
        pushed.append((forward.node, ref))
        digest = regs[forward.node].add_image(repository, [ref.encode() * 10])
        return X.Moved(node=forward.node, digest=digest, bytes_sent=10, layers_sent=1, via="engine")

    monkeypatch.setattr(X, "push_from_engine", push)
    env = SimpleNamespace(registry=SimpleNamespace(address=None))
    report = A.deliver(env, {n: Node(n) for n in regs}, {}, Progress(),
                       local={"web": "shop/web:1", "api": "shop/api:1"}, engine=object(), placement={},
                       seeds={"web": "n2", "api": "gone"})  # a seed not among the nodes: the first node
    assert sorted(pushed) == [("n1", "shop/api:1"), ("n2", "shop/web:1")] and len(report.moved) == 2
    assert not regs["n1"].manifests.keys() & {k for k in regs["n2"].manifests}  # nothing copied: placement {}


def test_a_registry_environment_moves_nothing(monkeypatch):
    monkeypatch.setattr(A, "deliver", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no transfer")))
    env = SimpleNamespace(name="dev", registry=SimpleNamespace(address="reg:5000"))
    flow = PL._Flow("up", env, "shop", PipelineOptions(), Progress(), Seams(performer={"user": "t"}))
    prep = SimpleNamespace(images={"web": "reg:5000/shop/web@sha256:" + "a" * 64})
    flow._transfer(SimpleNamespace(nodes={}), prep)
    flow._transfer_placed(SimpleNamespace(nodes={}), prep, SimpleNamespace(units={("web", "n1"): None}))
    assert flow.transferred is None
