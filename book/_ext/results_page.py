"""The ``{vaebook-results}`` directive: every headline table of the book, generated at build time.

Used once, in ``book/results.md``::

    ```{vaebook-results}
    ```

For each chapter with rows in :data:`vaebook.results.ROWS` it writes a link to the chapter and a table: what is
measured, our number ± standard error (read from the shipped checkpoint's stored evaluation), the published
number, its source, and our setting. Nothing in the table is typed into the page: when a checkpoint is retrained,
the next build shows its numbers.
"""

from __future__ import annotations

from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

CHAPTERS = {
    "ch01": ("ch01_vae", "The Gaussian KL and the VAE"),
    "ch02": ("ch02_mixtures", "Mixtures"),
    "ch03": ("ch03_concrete", "The Concrete / Gumbel-Softmax relaxation"),
    "ch04": ("ch04_igr", "Invertible Gaussian reparameterization"),
    "ch05": ("ch05_recab", "ReCAB"),
    "ch07": ("ch07_ldc_vae", "The LDC-VAE"),
    "ch08": ("ch08_soft_introvae", "Soft-IntroVAE"),
    "ch09": ("ch09_vrnn", "The variational RNN"),
}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The page's Markdown: one linked heading line and one table per chapter."""
    from vaebook import results

    by_chapter: dict[str, list[dict]] = {}
    for r in results.rows():
        by_chapter.setdefault(r["chapter"], []).append(r)
    out = []
    for ch, rs in by_chapter.items():
        doc, _ = CHAPTERS[ch]
        commits = sorted({r["commit"] for r in rs if r["commit"]})
        ckpts = sorted({r["checkpoint"] for r in rs})
        out += [
            f"**{{doc}}`{doc}`**: checkpoints "
            + ", ".join(f"`{c}`" for c in ckpts)
            + (
                " (trained at commit "
                + ", ".join(f"`{c}`" for c in commits)
                + ")"
                if commits
                else ""
            ),
            "",
            "| result | ours | published | source | our setting |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {_cell(r['result'])} | {_cell(r['ours_text'])} "
            f"| {_cell(r['published_text'])} | {_cell(r['source'])} "
            f"| {_cell(r['setting'])} |"
            for r in rs
        ]
        out.append("")
    return "\n".join(out)


class ResultsDirective(SphinxDirective):
    has_content = False

    def run(self):
        from docutils import nodes

        from vaebook import results
        from vaebook.pretrained import checkpoint_path

        for r in results.ROWS:  # rebuild the page when a checkpoint changes
            self.env.note_dependency(str(checkpoint_path(r.checkpoint)))

        container = nodes.container(classes=["vaebook-results"])
        self.state.nested_parse(
            StringList(markdown().splitlines(), source="vaebook-results"),
            self.content_offset,
            container,
        )
        return [container]


def setup(app: Sphinx) -> dict:
    app.add_directive("vaebook-results", ResultsDirective)
    return {
        "version": "1.0",
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
