"""Draw docs/benchmarks.svg from bench/results/latest.json: validations/s per case against the limits.

Run after bench/validate.py: .venv/bin/python bench/plot.py   (plain SVG, no plotting library)
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
OUTPUT = ROOT / "docs" / "benchmarks.svg"
LIMIT_KEYS = {"ES256": "ecdsa256_verify", "RS256": "rsa2048_verify", "EdDSA": "ed25519_verify"}


def main() -> None:
    data = json.loads(RESULTS.read_text())
    cases = [c for c in data["cases"] if "paced" not in c["name"]]
    rows: dict[str, dict[str, float]] = {}
    for case in cases:
        label = case["name"]
        rows.setdefault(label, {})["hit" if case["cache_ttl"] > 0 else "miss"] = case["rps"]
    nginx = float(data["nginx"]["rps"])
    scale_max = max(max(v for r in rows.values() for v in r.values()), 16000.0)
    left, width, bar, gap, top = 150, 560, 14, 14, 50
    height = top + len(rows) * (2 * bar + gap) + 70
    x = lambda value: left + width * min(value, scale_max) / scale_max  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 330}" height="{height}" '
           'font-family="Helvetica, Arial, sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14" font-weight="bold">GET /v1/validate, requests/s '
           f'({escape(data["started_utc"])}, {data["machine"]["nproc"]} CPUs shared by wrk, daemon, '
           'Redis)</text>']  # fmt: skip
    y = top
    for label, values in rows.items():
        out.append(f'<text x="{left - 8}" y="{y + bar + 4}" text-anchor="end">{escape(label)}</text>')
        for kind, colour, offset in (("hit", "#4c8bd6", 0), ("miss", "#e08a3c", bar)):
            if kind in values:
                w = x(values[kind]) - left
                out.append(f'<rect x="{left}" y="{y + offset}" width="{w:.1f}" height="{bar - 2}" fill="{colour}"/>')
                out.append(f'<text x="{left + w + 4:.1f}" y="{y + offset + bar - 4}">{values[kind]:,.0f}</text>')
        alg = label.split()[-1] if label.startswith("JWT") else ""
        limit_key = LIMIT_KEYS.get(alg)
        if limit_key and limit_key in data["limits"]:
            target = 0.6 * float(data["limits"][limit_key])
            lx = x(target)
            out.append(f'<line x1="{lx:.1f}" y1="{y - 2}" x2="{lx:.1f}" y2="{y + 2 * bar}" stroke="#333" '
                       'stroke-width="2" stroke-dasharray="4 2"/>')  # fmt: skip
            out.append(f'<text x="{lx + 4:.1f}" y="{y - 3}" font-size="10" fill="#333">60% openssl {alg} '
                       f'verify/s (1 core): {target:,.0f}{" ▶" if target > scale_max else ""}</text>')  # fmt: skip
        y += 2 * bar + gap
    legend_y = y + 16
    out += [f'<rect x="{left}" y="{legend_y - 10}" width="12" height="12" fill="#4c8bd6"/>',
            f'<text x="{left + 18}" y="{legend_y}">cache hit (cache.ttl 5 s)</text>',
            f'<rect x="{left + 190}" y="{legend_y - 10}" width="12" height="12" fill="#e08a3c"/>',
            f'<text x="{left + 208}" y="{legend_y}">cache miss (cache.ttl 0)</text>',
            f'<text x="{left}" y="{legend_y + 22}" fill="#555">HTTP ceiling on this machine: nginx static 200 '
            f'at {nginx:,.0f}/s (off scale)</text>', "</svg>"]  # fmt: skip
    OUTPUT.write_text("\n".join(out) + "\n")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
