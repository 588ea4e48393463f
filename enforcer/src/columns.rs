//! The CLI's plain tables (`tollgate verify`, `tollgate flows`, the lab's report): a header
//! row and rows of cells in left-aligned columns, each as wide as its widest cell, two spaces
//! apart, no borders and no trailing spaces. comfy-table lays them out.

use comfy_table::{Row, Table, presets::NOTHING};

/// The lines of the table of `header` and `rows`, each without its line break.
pub fn lines<R: Into<Row>>(header: R, rows: impl IntoIterator<Item = R>) -> Vec<String> {
    let mut table = Table::new();
    table.load_style(NOTHING).set_header(header).add_rows(rows);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect()
}

/// The table of `header` and `rows`, a line break after each line.
pub fn render<R: Into<Row>>(header: R, rows: impl IntoIterator<Item = R>) -> String {
    lines(header, rows)
        .into_iter()
        .map(|line| line + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_lines_have_no_trailing_space() {
        let text = render(
            vec!["A", "BB", "C"],
            [vec!["long cell", "x", ""], vec!["y", "wider cell", "z"]],
        );
        assert_eq!(
            text,
            "A          BB          C\nlong cell  x\ny          wider cell  z\n"
        );
    }
}
