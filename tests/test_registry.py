import pytest

from segadapt.errors import UsageError
from segadapt.registry import Registry, close_matches


def test_register_get_and_close_matches():
    reg = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        pass

    @reg.register("beta")
    def beta():
        return 1

    assert reg.get("alpha") is Alpha and reg.get("beta") is beta
    assert reg.names() == ["alpha", "beta"] and "alpha" in reg and len(reg) == 2
    with pytest.raises(UsageError, match=r"unknown widget 'alpah' \(did you mean: alpha\?\) \(available: alpha, beta\)"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("alpha")(beta)
    assert close_matches("zzz", ["alpha"]) == ""
