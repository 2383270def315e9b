"""SASS text analysis for ``bench.sass``: the main loop, its instruction mix and issue
ceiling, H100 occupancy, ptxas -v facts, and the issue-13 verdict. Pure text in, dicts
out (no compiler, no torch); the definitions are in ``bench.sass``'s docstring."""
import re

# H100 / H200 SXM (sm_90), per SM
H100 = dict(regs=65536, reg_alloc_unit=256, max_regs_thread=255, max_warps=64, max_blocks=32,
            smem_sm=233472, smem_block=232448, smem_reserved_block=1024, issue_per_clk=4)
FMA_PER_CLK = {"bf16": 2048, "fp16": 2048, "fp32-tf32": 1024, "fp32-ieee": 128}
TARGET_CEILING = 0.9

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")

# instruction class by opcode (the part before the first '.')
_CLASSES = [
    ("mma", {"HGMMA", "HMMA", "IMMA", "DMMA", "BMMA"}),
    ("tma", {"UTMALDG", "UTMASTG", "UTMAPF", "UBLKCP", "UTMACCTL", "UTMACMDFLUSH"}),
    ("global_mem", {"LDG", "STG", "LDGSTS", "LDGDEPBAR", "DEPBAR", "RED", "REDG", "ATOM", "ATOMG", "LD", "ST",
                    "CCTL", "REDUX"}),
    ("shared_mem", {"LDS", "STS", "LDSM", "STSM", "ATOMS", "LDSMT"}),
    ("local_mem", {"LDL", "STL"}),
    ("fp32", {"FFMA", "FADD", "FMUL", "FMNMX", "FSEL", "FSETP", "FSET", "FCHK", "FSWZADD", "FMNMX3"}),
    ("fp16x2", {"HFMA2", "HADD2", "HMUL2", "HMNMX2", "HSETP2", "HSET2"}),
    ("fp64", {"DFMA", "DADD", "DMUL", "DSETP"}),
    ("convert", {"F2F", "F2FP", "I2F", "F2I", "I2FP", "F2IP", "FRND"}),
    ("mufu", {"MUFU"}),
    ("int", {"IMAD", "IADD3", "IADD", "LOP3", "LOP", "SHF", "SHL", "SHR", "ISETP", "LEA", "IABS", "SEL", "IMNMX",
             "VIMNMX", "VIADD", "PRMT", "SGXT", "BMSK", "POPC", "FLO", "IDP", "IMUL", "ISCADD", "BREV", "IMAD3",
             "VIADDMNMX", "IADD32I", "IMUL32I", "LOP32I"}),
    ("move_pred", {"MOV", "MOV32I", "CS2R", "S2R", "PLOP3", "P2R", "R2P", "SHFL", "VOTE", "VOTEU", "S2UR",
                   "R2UR", "MATCH", "LDC"}),
    ("sync", {"BAR", "SYNCS", "MEMBAR", "ERRBAR", "WARPSYNC", "BSSY", "BSYNC", "ELECT", "FENCE", "ARRIVES",
              "WARPGROUP", "ACQBULK", "CGAERRBAR", "USETMAXREG"}),
    ("control", {"BRA", "BRX", "EXIT", "CALL", "RET", "JMP", "NOP", "YIELD", "BPT", "KILL", "NANOSLEEP"}),
]
_OP_CLASS = {op: cls for cls, ops in _CLASSES for op in ops}


def _op_class(op):
    base = op.split(".")[0]
    if base in _OP_CLASS:
        return _OP_CLASS[base]
    if base.startswith("U"):
        return "uniform"
    return "other"


def parse_sass(text):
    """cuobjdump -sass text -> [(address, predicate, opcode-with-modifiers, operands)]."""
    instrs = []
    for m in _LINE.finditer(text):
        addr, body = int(m.group(1), 16), m.group(2).strip()
        pred = ""
        if body.startswith("@"):
            pred, body = body.split(None, 1)
        parts = body.split(None, 1)
        instrs.append((addr, pred, parts[0], parts[1] if len(parts) > 1 else ""))
    return instrs


def _mma_fmas(op, warps):
    """FMAs per CTA for one execution of an MMA instruction (HGMMA mMxNxK per warpgroup,
    HMMA.MNK per warp: .16816 = m16 n8 k16, .1688 = m16 n8 k8)."""
    m = re.search(r"\.(\d+)x(\d+)x(\d+)", op)
    if op.startswith("HGMMA") and m:
        return int(m.group(1)) * int(m.group(2)) * int(m.group(3)) * max(1, warps // 4)
    if op.startswith("HMMA"):
        shape = op.split(".")[1]
        for mm, nn in (("16", "8"), ("8", "8")):
            if shape.startswith(mm + nn) and shape[len(mm) + len(nn):].isdigit():
                return int(mm) * int(nn) * int(shape[len(mm) + len(nn):]) * warps
    return 0


def find_main_loop(instrs):
    """The main loop: (start, end) indices of the longest backward branch whose body holds
    an MMA; without one, the backward branch whose body holds the most FFMA; else None."""
    index = {addr: i for i, (addr, *_rest) in enumerate(instrs)}
    loops = []
    for i, (addr, pred, op, operands) in enumerate(instrs):
        if op.startswith("BRA"):
            t = re.search(r"0x([0-9a-f]+)", operands)
            if t and int(t.group(1), 16) < addr and int(t.group(1), 16) in index:
                loops.append((index[int(t.group(1), 16)], i))
    if not loops:
        return None

    def count(lo, hi, prefix):
        return sum(1 for k in range(lo, hi + 1) if instrs[k][2].startswith(prefix))

    with_mma = [lp for lp in loops if count(*lp, "HGMMA") or count(*lp, "HMMA")]
    if with_mma:
        return max(with_mma, key=lambda lp: lp[1] - lp[0])
    ffma = max(loops, key=lambda lp: (count(*lp, "FFMA"), lp[1] - lp[0]))
    return ffma if count(*ffma, "FFMA") else max(loops, key=lambda lp: lp[1] - lp[0])


def analyze_sass(text, *, warps, dtype, tile=None):
    """Main-loop statistics of one kernel's SASS (see the module docstring)."""
    instrs = parse_sass(text)
    ops = [op for _, _, op, _ in instrs]
    res = {
        "sass_instructions": len(instrs),
        "uses_wgmma": any(o.startswith("HGMMA") for o in ops),
        "uses_mma_sync": any(o.startswith("HMMA") for o in ops),
        "uses_tma": any(o.startswith("UTMALDG") for o in ops),
        "uses_cp_async": any(o.startswith("LDGSTS") for o in ops),
        "local_mem_instructions": sum(1 for o in ops if o.startswith(("LDL", "STL"))),
    }
    loop = find_main_loop(instrs)
    if loop is None:
        res["main_loop"] = None
        return res
    lo, hi = loop
    body = instrs[lo:hi + 1]
    mix = {}
    for _, _, op, _ in body:
        cls = _op_class(op)
        mix[cls] = mix.get(cls, 0) + 1
    top_ops = {}
    for _, _, op, _ in body:
        base = op.split(".")[0]
        top_ops[base] = top_ops.get(base, 0) + 1
    n_body = len(body)
    mma_ops = [op for _, _, op, _ in body if op.startswith(("HGMMA", "HMMA"))]
    if any(o.startswith("HGMMA") for o in mma_ops):
        engine = "wgmma"
    elif mma_ops:
        engine = "mma.sync"
    else:
        engine = "FFMA"
    fmas = sum(_mma_fmas(o, warps) for o in mma_ops)
    if not fmas and tile is not None:
        fmas = tile[0] * tile[1] * tile[2]  # the FFMA dot: the tile's FMAs
    clocks = fmas / FMA_PER_CLK[dtype] if fmas else 0.0
    warp_instr = n_body * warps
    res["main_loop"] = {
        "start": f"0x{body[0][0]:x}", "end": f"0x{body[-1][0]:x}",
        "engine": engine,
        "mma_instructions": len(mma_ops),
        "mma_shape": sorted(set(o for o in mma_ops)),
        "instr_per_thread_per_iter": n_body,
        "mix": dict(sorted(mix.items(), key=lambda kv: -kv[1])),
        "top_opcodes": dict(sorted(top_ops.items(), key=lambda kv: -kv[1])[:12]),
        "fma_per_iter": fmas,
        "tile_fma_per_iter": tile[0] * tile[1] * tile[2] if tile else None,
        "tc_clocks_per_iter": clocks,
        "warp_instr_per_iter": warp_instr,
        "issue_ceiling": min(1.0, H100["issue_per_clk"] * clocks / warp_instr) if warp_instr else 0.0,
        "has_ldgsts": any(o.startswith("LDGSTS") for _, _, o, _ in body),
        "has_utmaldg": any(o.startswith("UTMALDG") for _, _, o, _ in body),
        "has_ldg": any(o.startswith("LDG") and not o.startswith("LDGSTS") and not o.startswith("LDGDEPBAR")
                       for _, _, o, _ in body),
        "local_mem_in_loop": mix.get("local_mem", 0),
    }
    return res


def occupancy(regs, smem, warps):
    """Resident CTAs and warps per SM on an H100, and what limits them."""
    per_warp = -(-max(regs, 1) * 32 // H100["reg_alloc_unit"]) * H100["reg_alloc_unit"]
    by_regs = (H100["regs"] // per_warp) // warps
    by_smem = H100["smem_sm"] // (smem + H100["smem_reserved_block"]) if smem <= H100["smem_block"] else 0
    by_warps = H100["max_warps"] // warps
    blocks = min(by_regs, by_smem, by_warps, H100["max_blocks"])
    limiter = min((("registers", by_regs), ("shared memory", by_smem), ("warps", by_warps),
                   ("blocks", H100["max_blocks"])), key=lambda kv: kv[1])[0]
    return {"ctas_per_sm": blocks, "warps_per_sm": blocks * warps, "occupancy": blocks * warps / H100["max_warps"],
            "limited_by": limiter}


def verdict(res):
    """The issue-13 target checks of one analysed conv variant: {check: bool}."""
    loop = res.get("main_loop") or {}
    return {
        "no_spills": res.get("spill_bytes", 1) == 0,
        "smem_fits": res.get("shared", 1 << 30) <= H100["smem_block"],
        "wgmma": loop.get("engine") == "wgmma",
        "ceiling": loop.get("issue_ceiling", 0.0) >= TARGET_CEILING,
    }


def _parse_ptxas(log):
    """{registers, spill_store_bytes, spill_load_bytes, stack_bytes, perf_warnings} from a
    ptxas -v log (None where the log lacks it). perf_warnings: ptxas's "Potential Performance
    Loss" notes, e.g. C7515 "wgmma.mma_async instructions are serialized" (no overlap of
    consecutive wgmmas)."""
    def num(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None
    found = re.findall(r"\((C\d+)\) Potential Performance Loss: (.*?)(?: in the function '[^']*')?\s*$", log,
                       flags=re.M)
    return {"registers": num(r"Used (\d+) registers"), "spill_store_bytes": num(r"(\d+) bytes spill stores"),
            "spill_load_bytes": num(r"(\d+) bytes spill loads"), "stack_bytes": num(r"(\d+) bytes stack frame"),
            "perf_warnings": sorted({f"{code}: {text}" for code, text in found})}
