"""Print our parameter counts and FLOP positions beside the spec's (markdown tables for docs/costs.md)."""

from __future__ import annotations

from shallowdeep import build_sdn, output_costs

PARAMS = {
    ("vgg16_bn", 10, 32): (15_253_578, 15_468_683),
    ("resnet56", 10, 32): (855_770, 891_676),
    ("wrn32_4", 10, 32): (7_404_074, 7_547_500),
    ("mobilenet", 10, 32): (3_217_226, 3_483_520),
    ("vgg16_bn", 100, 32): (15_299_748, 17_450_753),
    ("resnet56", 100, 32): (861_620, 1_220_626),
    ("wrn32_4", 100, 32): (7_427_204, 8_861_410),
    ("mobilenet", 100, 32): (3_309_476, 5_972_380),
    ("vgg16_bn", 200, 64): (21_222_664, 26_753_470),
    ("resnet56", 200, 64): (868_120, 1_586_126),
    ("wrn32_4", 200, 64): (7_452_904, 10_321_310),
    ("mobilenet", 200, 64): (3_411_976, 11_195_381),
}
REF = {
    "resnet56": ([0.0389, 0.0770, 0.1128, 0.1507, 0.1865, 0.2243, 0.2527], 0.2526),
    "vgg16_bn": ([0.0795, 0.1930, 0.3064, 0.3820, 0.4955, 0.5711, 0.6288], 0.6283),
    "wrn32_4": ([0.4004, 0.7032, 1.0857, 1.3882, 1.7705, 2.0727, 2.3750], 2.3746),
    "mobilenet": ([0.1261, 0.2281, 0.3300, 0.4897, 0.6712, 0.7510], 0.7504),
}


def main() -> None:
    print("| model | classes, px | CNN params (ours / spec) | SDN params (ours / spec) | CNN GFLOPs (ours) |")
    print("|---|---|---|---|---|")
    for (arch, c, s), (pc, ps) in PARAMS.items():
        sdn = build_sdn(arch, c, s)
        nc = sum(p.numel() for p in sdn.cnn.parameters())
        ns = sum(p.numel() for p in sdn.parameters())
        print(f"| {arch} | {c}, {s} | {nc:,} / {pc:,} | {ns:,} / {ps:,} | {output_costs(sdn).cnn / 1e9:.4f} |")
    print()
    print("| model (CIFAR-10) | counter | relative cost of each output, % | max gap to spec (points) |")
    print("|---|---|---|---|")
    for arch, (ref, ref_cnn) in REF.items():
        sdn = build_sdn(arch, 10, 32)
        spec = [100 * r / ref_cnn for r in ref]
        print(f"| {arch} | spec (reference profiler) | {' '.join(f'{x:.1f}' for x in spec)} | |")
        for conv in ("torch", "reference"):
            rel = [100 * r for r in output_costs(sdn, conv).relative]
            gap = max(abs(a - b) for a, b in zip(rel, spec))
            print(f"| {arch} | {conv} | {' '.join(f'{x:.1f}' for x in rel)} | {gap:.2f} |")


if __name__ == "__main__":
    main()
