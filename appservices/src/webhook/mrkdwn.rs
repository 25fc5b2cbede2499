//! Slack mrkdwn -> Matrix: a plain `body` and an escaped `formatted_body` (HTML) from the same
//! parse. Everything the sender wrote is text; only the markup below becomes tags, so no raw
//! HTML ever passes through.
//!
//! Understood: `*bold*`, `_italic_`, `~strike~`, `` `code` ``, ```` ```blocks``` ````,
//! `<url|label>` and `<url>` links (http, https, mailto only), `<!here>`, `<!channel>` and
//! `<!everyone>` (-> `@room`), `<@U..|name>` users, `<#C..|name>` channels, `<!date^..|fallback>`,
//! `> ` quotes, newlines, and Slack's three escapes `&amp;`, `&lt;`, `&gt;`.

/// The two renderings of one piece of mrkdwn, and whether it mentions the whole room.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub plain: String,
    pub html: String,
    pub mentions_room: bool,
}

impl Rendered {
    /// Appends `other` as following lines; nothing when it is empty.
    pub fn push_lines(&mut self, other: Rendered) {
        if other.plain.is_empty() && other.html.is_empty() {
            return;
        }
        if self.plain.is_empty() && self.html.is_empty() {
            *self = other;
        } else {
            self.push_line(other);
        }
    }

    /// Appends `other` as the next line, even when empty (a blank line is kept).
    pub fn push_line(&mut self, other: Rendered) {
        self.plain.push('\n');
        // A block element (quote, code block) already breaks the line in HTML.
        if !ends_with_block(&self.html) && !starts_with_block(&other.html) {
            self.html.push_str("<br>");
        }
        self.plain.push_str(&other.plain);
        self.html.push_str(&other.html);
        self.mentions_room |= other.mentions_room;
    }

    /// Plain text as is (Slack's `plain_text` objects): escaped, newlines kept.
    pub fn plain_text(text: &str) -> Rendered {
        Rendered { plain: text.to_owned(), html: escape(text).replace('\n', "<br>"), mentions_room: false }
    }

    /// Wraps the HTML in `<tag>` (the plain text is unchanged).
    pub fn wrap(mut self, tag: &str) -> Rendered {
        self.html = format!("<{tag}>{}</{tag}>", self.html);
        self
    }
}

fn ends_with_block(html: &str) -> bool {
    html.ends_with("</blockquote>") || html.ends_with("</pre>") || html.ends_with("<hr>")
}

fn starts_with_block(html: &str) -> bool {
    html.starts_with("<blockquote>") || html.starts_with("<pre>") || html.starts_with("<hr>")
}

/// HTML-escapes text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Slack's escapes: senders write `&amp;`, `&lt;` and `&gt;` for literal `&`, `<`, `>`.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Converts mrkdwn. With `mrkdwn == false` (the payload's `"mrkdwn": false`) emphasis and code
/// markers stay literal; links and mentions are still read, as Slack does.
pub fn render(text: &str, mrkdwn: bool) -> Rendered {
    // Code blocks first: nothing inside them is markup. An unclosed fence is text.
    let mut segments: Vec<(bool, &str)> = Vec::new();
    let mut rest = text;
    while mrkdwn
        && let Some(open) = rest.find("```")
        && let Some(len) = rest[open + 3..].find("```")
    {
        segments.push((false, &rest[..open]));
        segments.push((true, &rest[open + 3..open + 3 + len]));
        rest = &rest[open + 3 + len + 3..];
    }
    segments.push((false, rest));
    let mut out = Rendered::default();
    let mut started = false;
    for (index, &(is_block, segment)) in segments.iter().enumerate() {
        let piece = if is_block {
            let code = unescape(segment);
            let code = code.strip_prefix('\n').unwrap_or(&code);
            let code = code.strip_suffix('\n').unwrap_or(code);
            Rendered {
                plain: format!("```\n{code}\n```"),
                html: format!("<pre><code>{}</code></pre>", escape(code)),
                mentions_room: false,
            }
        } else {
            // The line breaks next to a block are the block's own.
            let mut segment = segment;
            if index > 0 {
                segment = segment.strip_prefix('\n').unwrap_or(segment);
            }
            if index + 1 < segments.len() {
                segment = segment.strip_suffix('\n').unwrap_or(segment);
            }
            if segment.is_empty() && segments.len() > 1 {
                continue;
            }
            render_lines(segment, mrkdwn)
        };
        if started {
            out.push_line(piece);
        } else {
            out = piece;
            started = true;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A literal character (Slack's escapes already decoded: never markup).
    Lit(char),
    /// A character that may be an emphasis marker or a quote sign.
    Ch(char),
    Code(String),
    Link {
        url: String,
        label: String,
    },
    /// A mention or reference rendered as text (`@room`, `@name`, `#channel`, a date).
    Text {
        text: String,
        room: bool,
    },
}

impl Tok {
    fn char(&self) -> Option<char> {
        match self {
            Tok::Lit(c) | Tok::Ch(c) => Some(*c),
            _ => None,
        }
    }
}

fn tokenize_line(line: &str, mrkdwn: bool) -> Vec<Tok> {
    let mut toks = Vec::new();
    let mut i = 0;
    let bytes = line.as_bytes();
    // Once no `>` is left, no later `<` can open a token: stop looking (linear on `<<<<...`).
    let mut no_closing_angle = false;
    while i < line.len() {
        let rest = &line[i..];
        if mrkdwn
            && bytes[i] == b'`'
            && let Some(end) = rest[1..].find('`')
            && end > 0
        {
            toks.push(Tok::Code(unescape(&rest[1..1 + end])));
            i += end + 2;
            continue;
        }
        if bytes[i] == b'<' && !no_closing_angle {
            match rest.find('>') {
                Some(end) => {
                    toks.push(angle(&rest[1..end]));
                    i += end + 1;
                    continue;
                }
                None => no_closing_angle = true,
            }
        }
        if bytes[i] == b'&' {
            let entity = [("&amp;", '&'), ("&lt;", '<'), ("&gt;", '>')].into_iter().find(|(e, _)| rest.starts_with(e));
            if let Some((e, c)) = entity {
                // `&gt;` at the start of a line is Slack's quote sign.
                toks.push(if c == '>' && toks.is_empty() { Tok::Ch(c) } else { Tok::Lit(c) });
                i += e.len();
                continue;
            }
        }
        let c = rest.chars().next().expect("not at the end");
        toks.push(Tok::Ch(c));
        i += c.len_utf8();
    }
    toks
}

/// One `<...>` token.
fn angle(inner: &str) -> Tok {
    let (target, label) = match inner.split_once('|') {
        Some((t, l)) => (t, Some(unescape(l))),
        None => (inner, None),
    };
    if let Some(special) = target.strip_prefix('!') {
        let name = special.split('^').next().unwrap_or("");
        return match name {
            "here" | "channel" | "everyone" => Tok::Text { text: "@room".into(), room: true },
            "date" => Tok::Text { text: label.unwrap_or_default(), room: false },
            "subteam" => Tok::Text { text: label.unwrap_or_else(|| "@team".into()), room: false },
            _ => Tok::Text { text: label.unwrap_or_else(|| format!("@{name}")), room: false },
        };
    }
    if let Some(user) = target.strip_prefix('@') {
        let name = label.unwrap_or_else(|| user.to_owned());
        let name = name.strip_prefix('@').map(str::to_owned).unwrap_or(name);
        return Tok::Text { text: format!("@{name}"), room: false };
    }
    if let Some(channel) = target.strip_prefix('#') {
        let name = label.unwrap_or_else(|| channel.to_owned());
        return Tok::Text { text: format!("#{name}"), room: false };
    }
    let url = unescape(target);
    if is_safe_url(&url) {
        let label = label.filter(|l| !l.is_empty()).unwrap_or_else(|| match url.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("mailto:") => url[7..].to_owned(),
            _ => url.clone(),
        });
        return Tok::Link { url, label };
    }
    // Any other scheme (javascript:, data:, ...) is never a link: the label, or the text as
    // written (`<script>` is shown as such, escaped).
    Tok::Text { text: label.unwrap_or_else(|| format!("<{url}>")), room: false }
}

fn is_safe_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("mailto:")
}

/// A link from separate fields (an attachment's `title_link`): the label alone when the URL is
/// missing or not http(s)/mailto.
pub fn link(url: Option<&str>, label: &str) -> Rendered {
    let mut out = Rendered::default();
    let token = match url.filter(|u| is_safe_url(u)) {
        Some(url) => Tok::Link { url: url.to_owned(), label: label.to_owned() },
        None => Tok::Text { text: label.to_owned(), room: false },
    };
    emphasis(&[token], false, &mut out);
    out
}

fn is_ascii_word(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric())
}

fn marker_index(m: char) -> usize {
    match m {
        '*' => 0,
        '_' => 1,
        _ => 2,
    }
}

/// For each position and marker (`*`, `_`, `~`), the first token at or after it that can close
/// that marker: preceded by no space, followed by no ASCII letter or digit. One backward pass, so
/// finding a closer costs nothing and a long line of unmatched markers stays linear.
fn closers(toks: &[Tok]) -> Vec<[usize; 3]> {
    let mut next = vec![[usize::MAX; 3]; toks.len() + 1];
    for j in (0..toks.len()).rev() {
        next[j] = next[j + 1];
        if let Tok::Ch(m @ ('*' | '_' | '~')) = toks[j]
            && j > 0
            && !matches!(toks[j - 1].char(), Some(c) if c.is_whitespace())
            && !is_ascii_word(toks.get(j + 1).and_then(Tok::char))
        {
            next[j][marker_index(m)] = j;
        }
    }
    next
}

/// Renders tokens with `*`, `_`, `~` emphasis (nested: each marker closes at its first closer).
fn emphasis(toks: &[Tok], mrkdwn: bool, out: &mut Rendered) {
    let closers = if mrkdwn { closers(toks) } else { Vec::new() };
    emphasis_range(toks, 0, toks.len(), &closers, out);
}

fn emphasis_range(toks: &[Tok], start: usize, end: usize, closers: &[[usize; 3]], out: &mut Rendered) {
    let mut i = start;
    while i < end {
        if !closers.is_empty()
            && let Tok::Ch(m @ ('*' | '_' | '~')) = toks[i]
        {
            let before = if i == 0 { None } else { toks[i - 1].char() };
            let after = if i + 1 < end { Some(&toks[i + 1]) } else { None };
            // An opener follows no ASCII letter or digit (`snake_case` stays literal; Korean
            // particles right after a closer are fine: `*경보*가`) and precedes no space.
            let opens = !is_ascii_word(before)
                && after.is_some_and(|t| !matches!(t.char(), Some(c) if c.is_whitespace() || c == m));
            let close = closers.get(i + 2).map(|c| c[marker_index(m)]).filter(|&c| c < end);
            if opens && let Some(close) = close {
                let tag = match m {
                    '*' => "strong",
                    '_' => "em",
                    _ => "del",
                };
                out.html.push_str(&format!("<{tag}>"));
                emphasis_range(toks, i + 1, close, closers, out);
                out.html.push_str(&format!("</{tag}>"));
                i = close + 1;
                continue;
            }
        }
        match &toks[i] {
            Tok::Lit(c) | Tok::Ch(c) => {
                out.plain.push(*c);
                out.html.push_str(&escape(c.encode_utf8(&mut [0; 4])));
            }
            Tok::Code(code) => {
                out.plain.push('`');
                out.plain.push_str(code);
                out.plain.push('`');
                out.html.push_str(&format!("<code>{}</code>", escape(code)));
            }
            Tok::Link { url, label } => {
                if label == url || url.strip_prefix("mailto:") == Some(label.as_str()) {
                    out.plain.push_str(label);
                } else {
                    out.plain.push_str(&format!("{label} ({url})"));
                }
                out.html.push_str(&format!("<a href=\"{}\">{}</a>", escape(url), escape(label)));
            }
            Tok::Text { text, room } => {
                out.plain.push_str(text);
                out.html.push_str(&escape(text));
                out.mentions_room |= room;
            }
        }
        i += 1;
    }
}

/// Lines, with consecutive `> ` lines gathered into one quote.
fn render_lines(text: &str, mrkdwn: bool) -> Rendered {
    let mut out = Rendered::default();
    let mut started = false;
    let mut quote: Option<Rendered> = None;
    let flush = |quote: &mut Option<Rendered>, out: &mut Rendered, started: &mut bool| {
        if let Some(q) = quote.take() {
            let q = q.wrap("blockquote");
            if *started {
                out.push_line(q);
            } else {
                *out = q;
                *started = true;
            }
        }
    };
    for line in text.split('\n') {
        let mut toks = tokenize_line(line, mrkdwn);
        let quoted = toks.first() == Some(&Tok::Ch('>'));
        if quoted {
            toks.remove(0);
            if toks.first() == Some(&Tok::Ch(' ')) {
                toks.remove(0);
            }
        }
        let mut r = Rendered::default();
        emphasis(&toks, mrkdwn, &mut r);
        if quoted {
            r.plain = format!("> {}", r.plain);
            match &mut quote {
                Some(q) => q.push_line(r),
                None => quote = Some(r),
            }
            continue;
        }
        flush(&mut quote, &mut out, &mut started);
        if started {
            out.push_line(r);
        } else {
            out = r;
            started = true;
        }
    }
    flush(&mut quote, &mut out, &mut started);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(text: &str) -> (String, String) {
        let r = render(text, true);
        (r.plain, r.html)
    }

    #[test]
    fn emphasis_code_and_strike() {
        assert_eq!(
            both("*bold* _italic_ ~gone~ `x < y`"),
            (
                "bold italic gone `x < y`".into(),
                "<strong>bold</strong> <em>italic</em> <del>gone</del> <code>x &lt; y</code>".into()
            )
        );
        // Nesting.
        assert_eq!(both("*bold _and italic_*").1, "<strong>bold <em>and italic</em></strong>");
        // Markers inside words and unmatched markers stay literal.
        assert_eq!(
            both("snake_case_name and 2*3*4"),
            ("snake_case_name and 2*3*4".into(), "snake_case_name and 2*3*4".into())
        );
        assert_eq!(both("a * b * c").1, "a * b * c");
        assert_eq!(both("*unclosed").1, "*unclosed");
        // Emphasis does not cross lines.
        assert_eq!(both("*a\nb*").1, "*a<br>b*");
    }

    #[test]
    fn html_is_always_escaped() {
        let (plain, html) = both("<script>alert(1)</script> &lt;b&gt;not bold&lt;/b&gt; & \"quoted\" 'x'");
        assert!(!html.contains("<script") && !html.contains("<b>"), "{html}");
        assert_eq!(plain, "<script>alert(1)</script> <b>not bold</b> & \"quoted\" 'x'");
        assert!(html.contains("&lt;b&gt;not bold&lt;/b&gt; &amp; &quot;quoted&quot; &#39;x&#39;"), "{html}");
        // `<script>` is no link target: shown as written, escaped; never a tag.
        assert!(html.starts_with("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        // A label cannot inject attributes or tags.
        let (_, html) = both("<https://e.org/?a=1&amp;b=\"2\"|<b>x</b>>");
        assert!(html.starts_with("<a href=\"https://e.org/?a=1&amp;b=&quot;2&quot;\">&lt;b"), "{html}");
    }

    #[test]
    fn links_and_mentions() {
        assert_eq!(
            both("see <https://grafana.example/d/1?x=1&amp;y=2|the dashboard> or <https://e.org>"),
            (
                "see the dashboard (https://grafana.example/d/1?x=1&y=2) or https://e.org".into(),
                "see <a href=\"https://grafana.example/d/1?x=1&amp;y=2\">the dashboard</a> or <a href=\"https://e.org\">https://e.org</a>".into()
            )
        );
        assert_eq!(both("<mailto:ops@example.org>").0, "ops@example.org");
        // Only http(s) and mailto become links.
        assert_eq!(both("<javascript:alert(1)|click>"), ("click".into(), "click".into()));
        let r = render("<!here> disk full, <!channel|channel> <!everyone>", true);
        assert_eq!(r.plain, "@room disk full, @room @room");
        assert!(r.mentions_room);
        assert!(!render("no mention", true).mentions_room);
        assert_eq!(both("<@U024BE7LH> in <#C024BE7LR|general> <@U1|@minki>").0, "@U024BE7LH in #general @minki");
        assert_eq!(both("<!date^1392734382^{date}|Feb 18, 2014>").0, "Feb 18, 2014");
        assert_eq!(both("<!subteam^SAZ94GDB8|@ops>").0, "@ops");
        // A lone `<` (no closing `>`) is text.
        assert_eq!(both("a < b").1, "a &lt; b");
    }

    #[test]
    fn code_blocks_keep_their_content() {
        let (plain, html) = both("before\n```\nfn main() { *not bold* <https://x|y> }\n```\nafter");
        assert_eq!(plain, "before\n```\nfn main() { *not bold* <https://x|y> }\n```\nafter");
        assert_eq!(html, "before<pre><code>fn main() { *not bold* &lt;https://x|y&gt; }</code></pre>after");
        assert_eq!(both("```a &lt; b```"), ("```\na < b\n```".into(), "<pre><code>a &lt; b</code></pre>".into()));
        // An unclosed fence is text.
        assert_eq!(both("```open").1, "```open");
    }

    #[test]
    fn quotes_and_newlines() {
        let (plain, html) = both("alert\n> line one\n&gt; line two\nend");
        assert_eq!(plain, "alert\n> line one\n> line two\nend");
        assert_eq!(html, "alert<blockquote>line one<br>line two</blockquote>end");
        assert_eq!(both("a\n\nb").1, "a<br><br>b");
    }

    #[test]
    fn hostile_input_stays_linear() {
        // 64 KiB of openers that never close, of `<` without `>`, of nested markers.
        let started = std::time::Instant::now();
        for text in ["*a ".repeat(22_000), "<".repeat(65_536), "*_~".repeat(22_000), "`".repeat(65_536)] {
            let r = render(&text, true);
            assert!(r.plain.len() >= text.len() / 2);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn korean_text() {
        let (plain, html) =
            both("*경보*가 발생했습니다: _디스크_ 사용률 95% ~정상~ <https://grafana.example|대시보드 보기>");
        assert_eq!(plain, "경보가 발생했습니다: 디스크 사용률 95% 정상 대시보드 보기 (https://grafana.example)");
        assert_eq!(
            html,
            "<strong>경보</strong>가 발생했습니다: <em>디스크</em> 사용률 95% <del>정상</del> <a href=\"https://grafana.example\">대시보드 보기</a>"
        );
    }

    #[test]
    fn mrkdwn_false_keeps_markers() {
        let r = render("*not bold* <https://e.org|link> ```x```", false);
        assert_eq!(r.plain, "*not bold* link (https://e.org) ```x```");
        assert_eq!(r.html, "*not bold* <a href=\"https://e.org\">link</a> ```x```");
    }
}
