"""An allow-list contract type for import-linter: a package may import only what is listed.

import-linter's `forbidden` contract bans names; the estimator's purity is the other way round
(only the standard library, torch, numpy, scipy, Pillow, pydantic and itself), so a new
dependency fails until someone decides it belongs there.
"""

from __future__ import annotations

import sys

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class AllowedImportsContract(Contract):
    """Modules in `source_modules` import only `allowed_modules`, their own package and stdlib.

    Options:
        - source_modules: packages whose imports are checked (with their descendants).
        - allowed_modules: top-level external packages or internal packages they may import.
    """

    type_name = "allowed"

    source_modules = fields.ListField(subfield=fields.ModuleField())
    allowed_modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        allowed = set(self.allowed_modules) | set(sys.stdlib_module_names)  # type: ignore[arg-type]
        violations: list[tuple[str, str, int | None]] = []
        for source in self.source_modules:  # type: ignore[attr-defined]
            package = source.name
            allowed_here = allowed | {package}
            for module in sorted({package} | graph.find_descendants(package)):
                for imported in sorted(graph.find_modules_directly_imported_by(module)):
                    if _covered(imported, allowed_here):
                        continue
                    details = graph.get_import_details(importer=module, imported=imported)
                    line = details[0]["line_number"] if details else None
                    violations.append((module, imported, line))
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, imported, line in check.metadata["violations"]:
            where = f" (l.{line})" if line else ""
            output.print_error(f"{module} is not allowed to import {imported}{where}")
            output.new_line()


def _covered(module: str, allowed: set[str]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in allowed)
