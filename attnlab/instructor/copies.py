"""Whether a learner's function is one of the course's answers, pasted line for line.

The answer key (attnlab/answers/) and the model answers (the solution cells
of solutions/) are compared with each function of a learner's cell, their
code normalized (whitespace, comments and decorators aside). One of the
flags an instructor reads (:func:`attnlab.instructor.flags.code_flags`).
"""
from __future__ import annotations

import ast
import copy
import functools

import nbformat

from attnlab import cells

from attnlab.instructor import course

ROOT = course.ROOT


def _normalized(node) -> tuple[str, ...]:
    """A function's code, whitespace and comments aside: ast.unparse, line by line, decorators dropped."""
    node = copy.copy(node)
    node.decorator_list = []
    return tuple(ln.strip() for ln in ast.unparse(node).splitlines() if ln.strip())


def _body(node) -> tuple[str, ...]:
    """A function's body alone, its docstring and argument checks (arguments.*, _check*) dropped."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    keep = [st for st in body if not (isinstance(st, ast.Expr) and isinstance(st.value, ast.Call)
                                      and ast.unparse(st.value.func).startswith(("arguments.", "_check")))]
    return tuple(ln.strip() for st in keep for ln in ast.unparse(st).splitlines() if ln.strip())


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@functools.lru_cache(maxsize=None)
def _course_answers() -> tuple[dict, dict, dict]:
    """What a pasted answer would match, line for line:

    - ``whole``: every function of attnlab/answers/ and every model answer's function, signature,
      docstring and body (normalized) -> 'attnlab.answers.rms_norm' or '04_mla:rms_norm';
    - ``bodies``: the bodies of the answers' functions that no model answer shares (pasting one into
      the release's function is a copy of the answer key; a body equal to a model answer is the
      right answer, which the flags cannot tell from honest work);
    - ``models``: (workbook, grade_id) -> the normalized functions of that model answer, which are not
      compared with the same cell (the model answers must raise no flags).
    """
    whole, bodies, models = {}, {}, {}
    model_bodies = set()
    for nb_path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb")):
        for grade_id, src in cells.solution_cells(nbformat.read(nb_path, as_version=4)).items():
            try:
                fns = _functions(cells.parse(src))
            except SyntaxError:
                continue
            key = (nb_path.stem, grade_id)
            models[key] = {_normalized(f) for f in fns}
            for f in fns:
                model_bodies.add(_body(f))
                whole.setdefault(_normalized(f), f"the model answer {nb_path.stem}:{grade_id}")
    for topic in sorted((ROOT / "attnlab" / "answers").glob("[a-z]*.py")):
        for f in _functions(ast.parse(topic.read_text())):
            whole[_normalized(f)] = f"attnlab.answers.{f.name}"
            body = _body(f)
            if len(body) >= 2 and body not in model_bodies:
                bodies[body] = f"attnlab.answers.{f.name}"
    return whole, bodies, models


def answers_copied(tree, workbook: str, grade_id: str) -> list[str]:
    """One flag for each function of ``tree`` (a cell's code) that is a course answer line for line,
    or whose body is the answer key's; the model answer of ``workbook``'s cell ``grade_id`` itself
    is not compared."""
    whole, bodies, models = _course_answers()
    own = models.get((workbook, grade_id), set())
    found = []
    for f in _functions(tree):
        norm = _normalized(f)
        if norm in whole and norm not in own:
            found.append(f"{f.name} is {whole[norm]} line for line")
        elif _body(f) in bodies:
            found.append(f"the body of {f.name} is {bodies[_body(f)]} line for line")
    return found
