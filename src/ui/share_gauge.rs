//! A one-line bar of a VM's measured CPU share with a marker at its target:
//! `██████████░░░░│░░░  62.1% → 70%` (no marker and `→ –` without a target).

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::widgets::Widget;

/// The gauge: shares are fractions, clamped to 0..=1.
#[derive(Debug, Clone, Copy)]
pub struct ShareGauge {
    /// Measured share.
    pub share: f64,
    /// The share the policy pursues now, if it pursues one.
    pub target: Option<f64>,
    /// Colour of the filled part.
    pub color: Color,
}

impl Widget for ShareGauge {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width == 0 || area.height == 0 {
            return;
        }
        let share = self.share.clamp(0.0, 1.0);
        let target = self.target.map(|target| target.clamp(0.0, 1.0));
        let label = match target {
            Some(target) => format!(" {:5.1}% → {:.0}%", share * 100.0, target * 100.0),
            None => format!(" {:5.1}% → –", share * 100.0),
        };
        let label_width = (label.chars().count() as u16).min(area.width);
        let bar_width = area.width - label_width;
        let filled = (share * f64::from(bar_width)).round() as u16;
        let marker =
            target.map(|target| ((target * f64::from(bar_width)).round() as u16).min(bar_width.saturating_sub(1)));
        for x in 0..bar_width {
            let (symbol, style) = if bar_width > 1 && Some(x) == marker {
                ("│", Style::default().fg(Color::Yellow))
            } else if x < filled {
                ("█", Style::default().fg(self.color))
            } else {
                ("░", Style::default().fg(Color::DarkGray))
            };
            buf[(area.x + x, area.y)].set_symbol(symbol).set_style(style);
        }
        buf.set_stringn(area.x + bar_width, area.y, &label, usize::from(label_width), Style::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(share: f64, target: Option<f64>, width: u16) -> String {
        let area = Rect::new(0, 0, width, 1);
        let mut buf = Buffer::empty(area);
        ShareGauge { share, target, color: Color::Green }.render(area, &mut buf);
        (0..width).map(|x| buf[(x, 0)].symbol().to_string()).collect()
    }

    #[test]
    fn the_bar_fills_to_the_share_with_the_marker_at_the_target() {
        // Label "  50.0% → 70%" is 13 cells, leaving 17 for the bar: 9 filled
        // (half of 17, rounded), the marker at 12 (0.7 x 17, rounded).
        assert_eq!(render(0.5, Some(0.7), 30), "█████████░░░│░░░░  50.0% → 70%");
        // Clamped: a full 18-cell bar, the marker over its first cell.
        assert_eq!(render(1.5, Some(-1.0), 30), "│█████████████████ 100.0% → 0%");
    }

    #[test]
    fn without_a_target_there_is_no_marker() {
        assert_eq!(render(0.5, None, 30), "██████████░░░░░░░░░  50.0% → –");
    }

    #[test]
    fn tiny_areas_do_not_panic() {
        assert_eq!(render(0.5, Some(0.5), 1), " ");
        let mut buf = Buffer::empty(Rect::new(0, 0, 0, 0));
        ShareGauge { share: 0.5, target: Some(0.5), color: Color::Green }.render(Rect::new(0, 0, 0, 0), &mut buf);
    }
}
