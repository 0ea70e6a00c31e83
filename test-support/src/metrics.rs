//! docs/monitoring.md's metric table and a `/metrics` exposition, as comparable sets.

use std::collections::BTreeSet;

/// The `(name, type)` rows of a markdown metric table (`` | `dso_x_total` | counter | … ``),
/// counters named as exposed in `# TYPE` lines (without `_total`). Other lines are ignored.
pub fn documented_metrics(markdown: &str) -> BTreeSet<(String, String)> {
    markdown
        .lines()
        .filter_map(|l| {
            let mut cells = l.strip_prefix("| `")?.split(" | ");
            let name = cells.next()?.strip_suffix('`')?;
            let kind = cells.next()?.trim();
            let name = if kind == "counter" {
                name.strip_suffix("_total")?
            } else {
                name
            };
            Some((name.to_string(), kind.to_string()))
        })
        .collect()
}

/// The `(name, type)` of every `# TYPE` line of a text exposition.
pub fn exposed_metrics(exposition: &str) -> BTreeSet<(String, String)> {
    exposition
        .lines()
        .filter_map(|l| {
            let mut parts = l.strip_prefix("# TYPE ")?.split(' ');
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(rows: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        rows.iter()
            .map(|(n, k)| (n.to_string(), k.to_string()))
            .collect()
    }

    #[test]
    fn table_rows_are_read_with_counters_named_without_total() {
        let doc = "# Metrics\n\n| metric | type | labels |\n|---|---|---|\n\
                   | `dso_reconciles_total` | counter | — |\n\
                   | `dso_leader` | gauge | — |\n\
                   | `dso_odd` | counter | a counter without `_total` is not a row |\n\
                   text mentioning `dso_other` | gauge\n";
        assert_eq!(
            documented_metrics(doc),
            set(&[("dso_reconciles", "counter"), ("dso_leader", "gauge")])
        );
    }

    #[test]
    fn type_lines_are_read_and_samples_ignored() {
        let text = "# HELP dso_reconciles Reconciles.\n# TYPE dso_reconciles counter\n\
                    dso_reconciles_total 1\n# TYPE dso_leader gauge\ndso_leader 0\n# EOF\n";
        assert_eq!(
            exposed_metrics(text),
            set(&[("dso_reconciles", "counter"), ("dso_leader", "gauge")])
        );
    }
}
