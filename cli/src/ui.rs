//! Draws an [`App`] with ratatui. Reads the state only: every change happens in `app.rs`.
//!
//! The main screen: a title bar, the conversation list on the left (unread counts, a dot for
//! online peers, a lock for end-to-end encrypted conversations), the open chat on the right (messages with ticks, who is typing, the peer's
//! presence in the title), the input line and a status line.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;
use tern_protocol::types::{ConversationKind, Message};

use crate::app::{App, Conversation, Field, Focus, Screen, Tick, PAGE_MESSAGES};
use crate::format;

/// Width of the conversation list, in columns.
const LIST_COLUMNS: u16 = 30;

/// Rows a long status line (a recovery key, say) wraps onto at most.
const STATUS_ROWS_MAX: u16 = 3;

/// Draws the whole screen.
pub(crate) fn draw(frame: &mut Frame<'_>, app: &App, server: &str, now_ms: u64) {
    match app.screen {
        Screen::Login => draw_form(frame, app, server),
        Screen::Connecting => {
            let text = Paragraph::new(format!("connecting to {server}…"))
                .block(Block::default().borders(Borders::ALL).title(" tern "));
            frame.render_widget(text, centered(frame.area(), 50, 3));
        }
        Screen::Main => draw_main(frame, app, server, now_ms),
    }
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn draw_form(frame: &mut Frame<'_>, app: &App, server: &str) {
    let form = &app.form;
    let title = if form.register {
        " tern · create an account "
    } else {
        " tern · log in "
    };
    let area = centered(frame.area(), 60, 10);
    let marker = |field: Field| if form.field == field { "> " } else { "  " };
    let mut lines = vec![
        Line::from(format!("server    {server}")),
        Line::from(""),
        Line::from(format!(
            "{}username: {}",
            marker(Field::Username),
            form.username
        )),
        Line::from(format!(
            "{}password: {}",
            marker(Field::Password),
            "*".repeat(form.password.chars().count())
        )),
        Line::from(""),
        Line::from(Span::styled(
            "Enter: submit · Tab: next field · F2: log in / register · Ctrl-C: quit",
            Style::default().fg(Color::DarkGray),
        )),
    ];
    if let Some(error) = &form.error {
        lines.push(Line::from(Span::styled(
            error.clone(),
            Style::default().fg(Color::Red),
        )));
    }
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

fn draw_main(frame: &mut Frame<'_>, app: &App, server: &str, now_ms: u64) {
    let status_rows = app
        .status
        .as_ref()
        .map_or(1, |status| status_rows(&status.text, frame.area().width));
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(3),
            Constraint::Length(status_rows),
        ])
        .split(frame.area());
    let me = app
        .me
        .as_ref()
        .map(|m| m.username.clone())
        .unwrap_or_default();
    frame.render_widget(
        Paragraph::new(format!(" tern · {me} @ {server}"))
            .style(Style::default().add_modifier(Modifier::REVERSED)),
        rows[0],
    );
    let columns = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Length(LIST_COLUMNS), Constraint::Min(10)])
        .split(rows[1]);
    draw_list(frame, app, columns[0]);
    draw_chat(frame, app, columns[1], now_ms);
    draw_input(frame, app, rows[2]);
    let status = match &app.status {
        Some(status) => Span::styled(
            status.text.clone(),
            Style::default().fg(if status.error {
                Color::Red
            } else {
                Color::Gray
            }),
        ),
        None => Span::styled(
            "Tab: list/input · Enter: open/send · PgUp/PgDn: scroll · Ctrl-N: new chat · \
             Ctrl-G: new group · /help · Ctrl-C: quit",
            Style::default().fg(Color::DarkGray),
        ),
    };
    frame.render_widget(
        Paragraph::new(Line::from(status)).wrap(Wrap { trim: false }),
        rows[3],
    );
}

/// The rows a status text needs at this width, up to [`STATUS_ROWS_MAX`].
fn status_rows(text: &str, width: u16) -> u16 {
    let width = usize::from(width.max(1));
    let rows = text.chars().count().div_ceil(width);
    u16::try_from(rows).map_or(STATUS_ROWS_MAX, |rows| rows.clamp(1, STATUS_ROWS_MAX))
}

fn focused(focus: bool) -> Style {
    if focus {
        Style::default().fg(Color::Cyan)
    } else {
        Style::default()
    }
}

fn draw_list(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let items: Vec<ListItem<'_>> = app
        .conversations
        .iter()
        .map(|c| {
            let online = c.kind == ConversationKind::Direct
                && app.presence.get(&c.peer).is_some_and(|p| p.online);
            let dot = if online {
                Span::styled("● ", Style::default().fg(Color::Green))
            } else if c.kind == ConversationKind::Group {
                Span::raw("# ")
            } else {
                Span::raw("  ")
            };
            let mut spans = vec![dot];
            if app.encrypted.contains(&c.id) {
                spans.push(Span::raw("🔒 "));
            }
            spans.push(Span::raw(app.title(c)));
            if c.left {
                spans.push(Span::styled(
                    " (left)",
                    Style::default().fg(Color::DarkGray),
                ));
            }
            if c.unread > 0 {
                spans.push(Span::styled(
                    format!(" ({})", c.unread),
                    Style::default()
                        .fg(Color::Yellow)
                        .add_modifier(Modifier::BOLD),
                ));
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    let mut state = ListState::default();
    state.select(
        app.selected
            .and_then(|id| app.conversations.iter().position(|c| c.id == id)),
    );
    let list = List::new(items)
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" conversations ")
                .border_style(focused(app.focus == Focus::List)),
        )
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(list, area, &mut state);
}

fn chat_title(app: &App, conversation: &Conversation, now_ms: u64) -> String {
    let mut title = format!(" {}", app.title(conversation));
    match conversation.kind {
        ConversationKind::Direct => {
            if let Some(presence) = app.presence.get(&conversation.peer) {
                if presence.online {
                    title.push_str(" · online");
                } else if let Some(seen) = presence.last_seen {
                    title.push_str(&format!(" · last seen {}", format::ago(seen, now_ms)));
                } else {
                    title.push_str(" · offline");
                }
            }
        }
        ConversationKind::Group => {
            title.push_str(&format!(" · {} members", conversation.members.len()));
        }
    }
    title.push(' ');
    title
}

fn draw_chat(frame: &mut Frame<'_>, app: &App, area: Rect, now_ms: u64) {
    let Some(conversation) = app.open_conversation() else {
        let hint = Paragraph::new("Select a conversation and press Enter, or Ctrl-N to start one.")
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL));
        frame.render_widget(hint, area);
        return;
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .title(chat_title(app, conversation, now_ms));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let me = app.me_id();

    let mut lines: Vec<Line<'_>> = conversation
        .messages
        .values()
        .map(|m| message_line(app, conversation, m, me))
        .collect();
    lines.extend(conversation.pending.iter().map(|p| {
        let tick = if p.failed.is_some() {
            Tick::Failed
        } else {
            Tick::Pending
        };
        let mut spans = vec![
            Span::styled("--:-- ", Style::default().fg(Color::DarkGray)),
            Span::styled(
                format!("{}: ", app.name(me)),
                Style::default().fg(Color::Cyan),
            ),
            Span::raw(p.body.clone()),
        ];
        if let Some(file) = &p.file {
            spans.push(Span::styled(
                format!(" [uploading {}]", file.display()),
                Style::default().fg(Color::Yellow),
            ));
        }
        spans.push(tick_span(tick));
        Line::from(spans)
    }));
    // Keep the newest message at the bottom: drop what is scrolled past, then show the last
    // messages that fit.
    let end = lines.len().saturating_sub(conversation.scroll);
    let start = end.saturating_sub(usize::from(inner.height).max(PAGE_MESSAGES));
    let mut shown: Vec<Line<'_>> = lines.drain(start..end).collect();
    if start == 0 && conversation.has_more && conversation.loaded {
        shown.insert(
            0,
            Line::from(Span::styled(
                "… PgUp for older messages",
                Style::default().fg(Color::DarkGray),
            )),
        );
    }
    let typing = app.typing_in(conversation.id);
    let typing_rows = u16::from(!typing.is_empty());
    let message_area = Rect {
        height: inner.height.saturating_sub(typing_rows),
        ..inner
    };
    let paragraph = Paragraph::new(shown).wrap(Wrap { trim: false });
    let total = paragraph.line_count(message_area.width);
    let overflow = total.saturating_sub(usize::from(message_area.height));
    let paragraph = paragraph.scroll((u16::try_from(overflow).unwrap_or(u16::MAX), 0));
    frame.render_widget(paragraph, message_area);
    if !typing.is_empty() {
        let verb = if typing.len() == 1 { "is" } else { "are" };
        let text = format!("{} {verb} typing…", typing.join(", "));
        let row = Rect {
            y: inner.y + inner.height - 1,
            height: 1,
            ..inner
        };
        frame.render_widget(
            Paragraph::new(Span::styled(
                text,
                Style::default()
                    .fg(Color::DarkGray)
                    .add_modifier(Modifier::ITALIC),
            )),
            row,
        );
    }
}

fn message_line<'a>(app: &App, conversation: &Conversation, m: &'a Message, me: u64) -> Line<'a> {
    let mine = m.sender == me;
    let name_style = if mine {
        Style::default().fg(Color::Cyan)
    } else {
        Style::default().fg(Color::Magenta)
    };
    let mut spans = vec![
        Span::styled(
            format!("{} ", format::clock(m.ts)),
            Style::default().fg(Color::DarkGray),
        ),
        Span::styled(format!("{}: ", app.name(m.sender)), name_style),
        Span::raw(m.body.as_str()),
    ];
    for attachment in &m.attachments {
        spans.push(Span::styled(
            format!(
                " [file {} · {} · {}; /save {}]",
                attachment.media_id,
                attachment.mime,
                format::size(attachment.size),
                attachment.media_id
            ),
            Style::default().fg(Color::Yellow),
        ));
    }
    if mine {
        spans.push(tick_span(conversation.tick(me, m.seq)));
    }
    Line::from(spans)
}

fn tick_span(tick: Tick) -> Span<'static> {
    match tick {
        Tick::Pending => Span::styled(" …", Style::default().fg(Color::DarkGray)),
        Tick::Failed => Span::styled(" ✗ not sent", Style::default().fg(Color::Red)),
        Tick::Sent => Span::styled(" ✓", Style::default().fg(Color::DarkGray)),
        Tick::Delivered => Span::styled(" ✓✓", Style::default().fg(Color::Gray)),
        Tick::Read => Span::styled(" ✓✓ read", Style::default().fg(Color::Blue)),
    }
}

fn draw_input(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let title = if app.input.starts_with('/') {
        " command "
    } else {
        " message "
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .title(title)
        .border_style(focused(app.focus == Focus::Input));
    let inner = block.inner(area);
    // Show the end of a long line.
    let width = usize::from(inner.width.saturating_sub(1));
    let chars: Vec<char> = app.input.chars().collect();
    let visible: String = chars[chars.len().saturating_sub(width)..].iter().collect();
    frame.render_widget(Paragraph::new(visible.clone()).block(block), area);
    if app.focus == Focus::Input {
        let x = inner.x + u16::try_from(visible.chars().count()).unwrap_or(0);
        frame.set_cursor_position((x.min(inner.x + inner.width.saturating_sub(1)), inner.y));
    }
}
