"""status_page: the book's status page, with each chapter's execution time measured during this build.

Loaded from ``_config.yml`` (``sphinx: local_extensions: {status_page: book/_ext}``). The directive

    ```{vaebook-status}
    ```

is replaced, after every chapter was read (and executed), by a table with one row per executed notebook:
its number and title, the run time MyST-NB measured while executing it in this build, the budget from the
style guide (target 90 s, at most 180 s on two CPU cores; the whole book in at most 20 minutes) and whether the
chapter is within it. The run times are those of the machine that built the pages; the paragraph under the table
says which machine that was (cores, torch threads) and when. A build without execution (for instance
``VAEBOOK_BOOK_EXECUTE=off``) says so instead of showing stale numbers.

It reuses MyST-NB's record of each execution (``NbMetadataCollector``: ``runtime``, ``succeeded``, ``mtime``),
the same data as MyST-NB's ``{nb-exec-table}``, and its trick for keeping the table current in incremental builds
(the page is re-read whenever a notebook was executed again).
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util.docutils import SphinxDirective

KEY = "vaebook_status_table"


class status_node(nodes.General, nodes.Element):
    """Placeholder replaced by :class:`StatusPostTransform`."""


class StatusDirective(SphinxDirective):
    has_content = False

    def run(self):
        from myst_nb.sphinx_ import NbMetadataCollector

        NbMetadataCollector.set_doc_data(self.env, self.env.docname, KEY, True)
        return [status_node()]


def _update(app: Sphinx, env):
    """Re-read the status page whenever a notebook was (re-)executed in this build."""
    from myst_nb.sphinx_ import NbMetadataCollector

    if not NbMetadataCollector.new_exec_data(env):
        return None
    return [
        d
        for d, data in NbMetadataCollector.get_doc_data(env).items()
        if data.get(KEY)
    ]


def _para(*children) -> nodes.paragraph:
    p = nodes.paragraph()
    for c in children:
        p += c if isinstance(c, nodes.Node) else nodes.Text(str(c))
    return p


def _row(cells) -> nodes.row:
    row = nodes.row()
    for c in cells:
        row += nodes.entry("", c if isinstance(c, nodes.Element) else _para(c))
    return row


def chapter_rows(env) -> list[dict]:
    """One dict per executed document, in the order of the table of contents (then by name)."""
    from myst_nb.sphinx_ import NbMetadataCollector

    data = NbMetadataCollector.get_doc_data(env)
    order = {d: i for i, d in enumerate(_toc_order(env))}
    rows = []
    for docname, meta in data.items():
        ex = meta.get("exec_data")
        if not ex:
            continue
        number = env.toc_secnumbers.get(docname, {}).get("")
        title = (
            env.titles[docname].astext() if docname in env.titles else docname
        )
        rows.append(
            {
                "docname": docname,
                "number": ".".join(map(str, number)) if number else "",
                "title": title,
                "runtime": ex.get("runtime"),
                "succeeded": bool(ex.get("succeeded")),
                "mtime": ex.get("mtime"),
                "method": ex.get("method"),
            }
        )
    rows.sort(key=lambda r: (order.get(r["docname"], 10**6), r["docname"]))
    return rows


def _toc_order(env) -> list[str]:
    """Documents in reading order, following the toctrees from the root document."""
    seen, out = set(), []

    def walk(doc):
        if doc in seen:
            return
        seen.add(doc)
        out.append(doc)
        for child in env.toctree_includes.get(doc, []):
            walk(child)

    walk(env.config.root_doc)
    return out


class StatusPostTransform(SphinxPostTransform):
    # before the reference resolvers, so the pending_xrefs below get
    # resolved
    default_priority = 8

    def run(self, **kwargs) -> None:
        for node in list(self.document.findall(status_node)):
            node.replace_self(self.build(self.env.docname))

    def build(self, parent: str) -> list[nodes.Node]:
        cfg = self.env.config
        target, limit, total_limit = (
            cfg.vaebook_budget_target_s,
            cfg.vaebook_budget_limit_s,
            cfg.vaebook_budget_book_s,
        )
        rows = chapter_rows(self.env)
        if not rows:
            note = nodes.note()
            note += _para(
                "The chapters were not executed in this build (execution mode "
                f"{cfg.nb_execution_mode!r}), so there are no run times to "
                "show. The published book is "
                "built with every chapter executed (",
                nodes.literal(text="jupyter-book build --all ."),
                ").",
            )
            return [note]
        table = nodes.table(classes=["colwidths-auto", "vaebook-status"])
        headers = [
            "Chapter",
            "Run time (s)",
            f"Within {target:g} s target",
            f"Within {limit:g} s limit",
            "Executed",
        ]
        tgroup = nodes.tgroup(cols=len(headers))
        table += tgroup
        for _ in headers:
            tgroup += nodes.colspec(colwidth=1)
        thead = nodes.thead()
        tgroup += thead
        thead += _row(headers)
        tbody = nodes.tbody()
        tgroup += tbody
        total = 0.0
        for r in rows:
            from sphinx.addnodes import pending_xref

            xref = pending_xref(
                refdoc=parent,
                reftarget="/" + r["docname"],
                reftype="doc",
                refdomain="std",
                refexplicit=True,
                refwarn=True,
                classes=["xref", "doc"],
            )
            label = (
                f"{r['number']}. {r['title']}" if r["number"] else r["title"]
            )
            xref += nodes.inline(text=label)
            rt = r["runtime"]
            total += rt or 0.0
            if not r["succeeded"]:
                within_t = within_l = "✗ failed"
            else:
                within_t = (
                    "✓ yes" if rt is not None and rt <= target else "✗ no"
                )
                within_l = (
                    "✓ yes" if rt is not None and rt <= limit else "✗ no"
                )
            when = (
                datetime.fromtimestamp(r["mtime"], tz=timezone.utc).strftime(
                    "%Y-%m-%d %H:%M UTC"
                )
                if r["mtime"]
                else ""
            )
            tbody += _row(
                [
                    _para(xref),
                    "–" if rt is None else f"{rt:.1f}",
                    within_t,
                    within_l,
                    when,
                ]
            )
        threads = os.environ.get("VAEBOOK_THREADS", "all")
        summary = _para(
            f"All {len(rows)} executed pages together: {total:.0f} s "
            f"({'within' if total <= total_limit else 'OVER'} the book's "
            f"budget of {total_limit / 60:g} minutes). "
            "Measured by MyST-NB while building these pages on "
            f"{platform.system()} {platform.machine()} with "
            f"{os.cpu_count()} CPU cores, torch intra-op threads per kernel: "
            f"{threads}, Python "
            f"{platform.python_version()}."
        )
        return [table, summary]


def setup(app: Sphinx) -> dict:
    app.add_config_value("vaebook_budget_target_s", 90.0, "env")
    app.add_config_value("vaebook_budget_limit_s", 180.0, "env")
    app.add_config_value("vaebook_budget_book_s", 1200.0, "env")
    app.add_node(status_node)
    app.add_directive("vaebook-status", StatusDirective)
    app.add_post_transform(StatusPostTransform)
    app.connect("env-updated", _update)
    return {
        "version": "1.0",
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
