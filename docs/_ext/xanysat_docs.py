"""Pages written at the start of every docs build (Sphinx ``builder-inited``).

- ``docs/_generated/sensors.md``: the sensor table, from ``xanysat.MODALITIES`` itself, so the
  docs cannot drift from the code; ``docs/sensors.md`` includes it.
- ``docs/notebooks/*.ipynb``: copies of the repository's ``notebooks/*.ipynb`` (stored without
  outputs), which myst-nb executes and renders; ``docs/examples.md`` lists them by including
  ``docs/_generated/notebooks.md`` (a glob toctree, or a note while there is no notebook, since
  an empty glob is a warning).

Both folders are gitignored. Files are rewritten only when their content changed, so an
incremental build re-reads only what changed.
"""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent
REPO = DOCS.parent
GENERATED = DOCS / "_generated"
NOTEBOOKS_IN = REPO / "notebooks"
NOTEBOOKS_OUT = DOCS / "notebooks"


def _write(path: Path, data: bytes) -> None:
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _esc(text: str) -> str:
    """Plain text for a Markdown table cell: Markdown punctuation escaped."""
    for char in "\\`*_[]<>|#":
        text = text.replace(char, "\\" + char)
    return " ".join(text.split())


def _code(items) -> str:
    return ", ".join(f"`{item}`" for item in items)


def _source_markdown(s) -> str:
    """One ``StacSource`` as a Markdown list item."""
    if s.asset_bands:
        assets = ", ".join(f"`{a}` band {b}" for a, b in zip(s.assets, s.asset_bands))
    else:
        assets = ", ".join("(derived or absent)" if a is None else f"`{a}`" for a in s.assets)
    units = f"DN x {s.scale:g} + {s.offset:g} = {_esc(s.units)}"
    if s.model_factor is not None:
        units += f"; x {s.model_factor:g} = model units"
    extras = [f"nodata {s.nodata:g}" if s.nodata is not None else "",
              f"QA asset `{s.qa_asset}`" if s.qa_asset else "",
              f"baseline offset {s.processing_baseline_offset:g}" if s.processing_baseline_offset else "",
              "items with " + ", ".join(f"`{k}` = `{v}`" for k, v in s.query) if s.query else ""]
    ready = "analysis ready" if s.analysis_ready else "**not analysis ready**"
    return "\n".join([
        f"- {s.catalog}, collection `{s.collection}` ({ready})",
        f"  - assets, in band order: {assets}",
        "  - " + "; ".join([units, *filter(None, extras)]),
        *([f"  - {_esc(s.notes)}"] if s.notes else []),
    ])


def sensor_table_markdown() -> str:
    """The sensor table (``xanysat.MODALITIES``) as Markdown."""
    from xanysat import MODALITIES

    lines = [
        "| sensor | bands, in projector order | pixel | token | time series | statistics | STAC collections |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in MODALITIES.values():
        collections = sorted({s.collection for s in m.stac if s.analysis_ready})
        stac = _code(collections) or ("none usable" if m.stac else "none")
        lines.append(
            f"| {{ref}}`{m.name} <sensor-{m.name}>` | `{' '.join(m.bands)}` | {m.resolution_m:g} m "
            f"| {m.token_m:g} m | {'yes' if m.time_series else 'no'} | {'yes' if m.norm else 'no'} | {stac} |"
        )
    lines += [
        "",
        (
            "*pixel*: the resolution the weights were trained at, the one the cube must have. "
            "*token*: the ground size of one sub-patch token. *statistics*: whether the table carries "
            "default normalisation statistics (`normalize=True`); for the others pass `normalize=` or "
            "`xanysat.fit_normalization(cube)` ({ref}`normalisation`). "
            "*STAC collections*: the analysis-ready collections `xanysat.stac.load` maps onto the sensor."
        ),
        "",
    ]
    for m in MODALITIES.values():
        lines += [f"(sensor-{m.name})=", f"## {m.name}", "", _esc(m.description), ""]
        facts = [
            f"- **Bands** ({m.n_bands}): {_code(m.bands)}",
            f"- **Pixel** {m.resolution_m:g} m, **token** {m.token_m:g} m "
            f"({m.subpatch_px} x {m.subpatch_px} px), "
            + ("time series `(time, band, y, x)` with dates" if m.time_series else "single date `(band, y, x)`"),
        ]
        if m.tile_token:
            facts.append("- **One token per tile** (a single pixel series per tile)")
        for band, how in m.derived_bands.items():
            facts.append(f"- **Derived band** `{band}`: {_esc(how)}")
        if m.band_aliases:
            aliases = ", ".join(f"`{a}` → {'/'.join(bs)}" for a, bs in m.band_aliases.items())
            facts.append(f"- **Band aliases**: {aliases}")
        if m.norm:
            facts.append(f"- **Statistics** ({_esc(m.norm.source)}): mean {_code(m.norm.mean)}; std {_code(m.norm.std)}")
        else:
            facts.append("- **Statistics**: none known; pass `normalize=` or fit them")
        lines += facts + [""]
        lines += ["**STAC sources**" if m.stac else "**STAC sources**: none tabulated.", ""]
        lines += [_source_markdown(s) for s in m.stac]
        lines.append("")
    return "\n".join(lines)


def copy_notebooks() -> list[str]:
    """Copy ``notebooks/*.ipynb`` to ``docs/notebooks/``; remove copies whose source is gone."""
    sources = sorted(NOTEBOOKS_IN.glob("*.ipynb")) if NOTEBOOKS_IN.is_dir() else []
    for source in sources:
        _write(NOTEBOOKS_OUT / source.name, source.read_bytes())
    names = {s.name for s in sources}
    if NOTEBOOKS_OUT.is_dir():
        for stale in NOTEBOOKS_OUT.glob("*.ipynb"):
            if stale.name not in names:
                stale.unlink()
    return sorted(names)


def notebooks_markdown(names: list[str]) -> str:
    """The list of notebooks for ``docs/examples.md``: a glob toctree, or a note while there is none."""
    if not names:
        return "No notebook yet: `notebooks/` holds no `.ipynb` file.\n"
    return "```{toctree}\n:glob:\n:maxdepth: 1\n\nnotebooks/*\n```\n"


def _builder_inited(app) -> None:
    _write(GENERATED / "sensors.md", sensor_table_markdown().encode())
    _write(GENERATED / "notebooks.md", notebooks_markdown(copy_notebooks()).encode())


def setup(app):
    app.connect("builder-inited", _builder_inited)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
