"""Capabilities: read a process's capability sets and name them as libcap's cap_to_text does."""
from __future__ import annotations

#: capability numbers -> names (linux/capability.h), in order
CAP_NAMES = [
    "cap_chown", "cap_dac_override", "cap_dac_read_search", "cap_fowner", "cap_fsetid",
    "cap_kill", "cap_setgid", "cap_setuid", "cap_setpcap", "cap_linux_immutable",
    "cap_net_bind_service", "cap_net_broadcast", "cap_net_admin", "cap_net_raw",
    "cap_ipc_lock", "cap_ipc_owner", "cap_sys_module", "cap_sys_rawio", "cap_sys_chroot",
    "cap_sys_ptrace", "cap_sys_pacct", "cap_sys_admin", "cap_sys_boot", "cap_sys_nice",
    "cap_sys_resource", "cap_sys_time", "cap_sys_tty_config", "cap_mknod", "cap_lease",
    "cap_audit_write", "cap_audit_control", "cap_setfcap", "cap_mac_override",
    "cap_mac_admin", "cap_syslog", "cap_wake_alarm", "cap_block_suspend", "cap_audit_read",
    "cap_perfmon", "cap_bpf", "cap_checkpoint_restore",
]


def read_caps(pid: int | str = "self") -> dict[str, int]:
    """The CapInh/CapPrm/CapEff/CapBnd/CapAmb masks of a process, from /proc/PID/status."""
    caps = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cap"):
                key, value = line.split(":", 1)
                caps[key] = int(value.strip(), 16)
    return caps


def names(mask: int) -> list[str]:
    """Capability names set in ``mask``; unknown high bits as numbers."""
    out = []
    bit = 0
    while mask >> bit:
        if mask >> bit & 1:
            out.append(CAP_NAMES[bit] if bit < len(CAP_NAMES) else str(bit))
        bit += 1
    return out


def to_text(pid: int | str = "self") -> str:
    """Like libcap's cap_to_text: ``= cap_chown,...+ep`` for the effective/permitted sets."""
    caps = read_caps(pid)
    eff = caps.get("CapEff", 0)
    if not eff:
        return "="
    return "= " + ",".join(names(eff)) + "+ep"
