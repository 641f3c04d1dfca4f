"""The setup plan: order and content, before anything runs."""
from runtime import steps as S
from runtime.net import backend_for
from runtime.spec import NetSpec, Spec, Volume


def spec(**kw):
    base = dict(argv=("true",), rootfs="/r", caps=(), net=NetSpec(mode="none"))
    base.update(kw)
    return Spec(**base)


def test_order():
    plan = S.plan(spec(volumes=(Volume(host="/h", target="/mnt"),), read_only=True),
                  backend_for(NetSpec(mode="none")))
    kinds = [type(s).__name__ for s in plan]
    assert kinds == ["MakeRslave", "BindRootfs", "MountProc", "MountDev", "MountSys", "BindVolume", "WriteEtc",
                     "WriteEtc", "WriteEtc", "PivotRoot", "Sysctl", "MaskPaths", "ReadOnlyPaths", "RemountRootReadOnly",
                     "SetHostname", "LoopbackUp"]


def test_generated_files():
    plan = S.plan(spec(hostname="box"), backend_for(NetSpec(mode="none")))
    etc = {s.name: s.content for s in plan if isinstance(s, S.WriteEtc)}
    assert etc["hostname"] == "box\n"
    assert "127.0.0.1\tlocalhost" in etc["hosts"] and "box" in etc["hosts"]


def test_host_network_keeps_lo_alone():
    plan = S.plan(spec(net=NetSpec(mode="host")), backend_for(NetSpec(mode="host")))
    assert not any(isinstance(s, S.LoopbackUp) for s in plan)
    assert not any(isinstance(s, S.RemountRootReadOnly) for s in plan)
