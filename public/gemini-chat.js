// How the chat renders Markdown. Chainlit's frontend bundle, as gemini_chat/frontend.py serves
// it, asks window.geminiChat.remarkPlugins for its remark plugins instead of using its own list.
// Loaded by Chainlit's `[UI] custom_js` setting, before the bundle runs.
//
// - No remark-directive: in Chainlit's list it turned "foo:bar" into "foo" and an empty block.
// - Math only where pandoc would see it: "$x$" when the opening $ is followed by a non-space, the
//   closing $ is preceded by a non-space and not followed by a digit. Anything else, such as the
//   prices in "$5 and $10", goes back to its exact source text.
// - "$$...$$" inside a paragraph is displayed, as in pandoc; \( ... \) and \[ ... \], which
//   Gemini often writes, are inline and displayed math too.
(function () {
  "use strict";

  var BACKSLASH = 92;
  var CLOSER = { 40: 41, 91: 93 }; // "(" -> ")", "[" -> "]"

  function isLineEnding(code) {
    return code !== null && code < -2; // micromark's codes for CR, LF and CRLF
  }

  // A micromark syntax extension: \( ... \) and \[ ... \] as the same tokens remark-math's
  // "$...$" produces, so remark-math builds the nodes and rehype-katex renders them.
  function tokenizeBracketMath(effects, ok, nok) {
    var closer;
    var size = 0;
    var closing = { tokenize: tokenizeClosing, partial: true };
    return start;

    function start(code) {
      effects.enter("mathText");
      effects.enter("mathTextSequence");
      effects.consume(code); // the backslash
      return open;
    }

    function open(code) {
      closer = CLOSER[code];
      if (!closer) return nok(code);
      effects.consume(code);
      effects.exit("mathTextSequence");
      return between;
    }

    function between(code) {
      if (code === null) return nok(code);
      if (isLineEnding(code)) {
        effects.enter("lineEnding");
        effects.consume(code);
        effects.exit("lineEnding");
        return between;
      }
      if (code === BACKSLASH) return effects.attempt(closing, done, escape)(code);
      effects.enter("mathTextData");
      return data(code);
    }

    function data(code) {
      if (code === null || isLineEnding(code) || code === BACKSLASH) {
        effects.exit("mathTextData");
        return between(code);
      }
      size++;
      effects.consume(code);
      return data;
    }

    // A backslash that does not close: it and the character after it are TeX ("\\", "\{").
    function escape(code) {
      effects.enter("mathTextData");
      effects.consume(code);
      size++;
      return escaped;
    }

    function escaped(code) {
      if (code === null || isLineEnding(code)) {
        effects.exit("mathTextData");
        return between(code);
      }
      effects.consume(code);
      return data;
    }

    function done(code) {
      if (!size) return nok(code);
      effects.exit("mathText");
      return ok(code);
    }

    function tokenizeClosing(effects, ok, nok) {
      return function (code) {
        effects.enter("mathTextSequence");
        effects.consume(code); // the backslash
        return function (code) {
          if (code !== closer) return nok(code);
          effects.consume(code);
          effects.exit("mathTextSequence");
          return ok;
        };
      };
    }
  }

  var bracketMathSyntax = {
    text: { 92: { name: "geminiChatBracketMath", tokenize: tokenizeBracketMath } },
  };

  function isSpace(character) {
    return character === undefined || /\s/.test(character);
  }

  function display(node) {
    node.data = node.data || {};
    node.data.hProperties = { className: ["language-math", "math-display"] };
  }

  // What an inline formula becomes: null to keep it, or a text node with its exact source.
  function checked(node, source) {
    var position = node.position;
    if (!position || position.start.offset == null || position.end.offset == null) return null;
    var start = position.start.offset;
    var end = position.end.offset;
    var written = source.slice(start, end);
    if (written.startsWith("$$") || written.startsWith("\\[")) {
      display(node);
      return null;
    }
    if (!written.startsWith("$")) return null; // \( ... \)
    var pandoc =
      !isSpace(written[1]) && !isSpace(written[written.length - 2]) && !/[0-9]/.test(source[end] || "");
    return pandoc ? null : { type: "text", value: written, position: position };
  }

  function walk(parent, source) {
    var children = parent.children;
    if (!children) return;
    for (var index = 0; index < children.length; index++) {
      var node = children[index];
      if (node.type === "inlineMath") {
        var text = checked(node, source);
        if (text) children[index] = text;
      } else {
        walk(node, source);
      }
    }
  }

  // A remark plugin, after remark-math: the bracket syntax, then the pandoc rule on the tree.
  function mathRules() {
    var data = this.data();
    (data.micromarkExtensions || (data.micromarkExtensions = [])).push(bracketMathSyntax);
    return function (tree, file) {
      walk(tree, String(file.value));
    };
  }

  // Called by the patched bundle with Chainlit's `latex` setting, its remark-math, and its own
  // plugins (cursor, GitHub Markdown, alerts) without remark-directive.
  function remarkPlugins(latex, remarkMath, plugins) {
    return latex ? plugins.concat([remarkMath, mathRules]) : plugins;
  }

  window.geminiChat = { remarkPlugins: remarkPlugins, mathRules: mathRules };
})();

// A message longer than the chat takes is refused here, before it is sent: the text stays in
// the box to be shortened, and a paste many times the limit never meets the server's socket
// limit (which would drop the connection). The server refuses the same messages on its side.
(function () {
  "use strict";

  function limit() {
    var meta = document.querySelector('meta[name="gemini-chat:max-message-chars"]');
    var value = meta ? parseInt(meta.getAttribute("content"), 10) : NaN;
    return isNaN(value) ? null : value;
  }

  function characters(text) {
    var count = 0;
    for (var _ of text) count++; // code points, as the server counts them
    return count;
  }

  function notice(composer, text) {
    var box = document.getElementById("gemini-chat-too-long");
    if (!box) {
      box = document.createElement("div");
      box.id = "gemini-chat-too-long";
      box.setAttribute("role", "alert");
      box.style.cssText =
        "margin:0 0 6px 0;padding:6px 10px;border-radius:8px;font-size:14px;" +
        "background:#fef2f2;color:#991b1b;";
    }
    box.textContent = text;
    var anchor = composer.closest("#message-composer") || composer.parentElement;
    if (box.parentElement !== anchor.parentElement) {
      anchor.parentElement.insertBefore(box, anchor);
    }
  }

  function clear() {
    var box = document.getElementById("gemini-chat-too-long");
    if (box) box.remove();
  }

  // True (and the user told why) when the composer's text is over the limit.
  function refused() {
    var composer = document.getElementById("chat-input");
    var max = limit();
    if (!composer || max === null || composer.value.length <= max) {
      clear();
      return false;
    }
    var length = characters(composer.value);
    if (length <= max) {
      clear();
      return false;
    }
    notice(
      composer,
      "Your message is " + length.toLocaleString("en-US") + " characters long; the limit is " +
        max.toLocaleString("en-US") + ". Shorten it or split it into several messages. " +
        "Nothing was sent."
    );
    return true;
  }

  function stop(event) {
    event.preventDefault();
    event.stopImmediatePropagation();
    event.stopPropagation();
  }

  // Capture listeners on the document run before React's, which sit on the app's root.
  document.addEventListener(
    "keydown",
    function (event) {
      if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
      if (!event.target || event.target.id !== "chat-input") return;
      if (refused()) stop(event);
    },
    true
  );
  document.addEventListener(
    "click",
    function (event) {
      var button = event.target && event.target.closest && event.target.closest("#chat-submit");
      if (button && refused()) stop(event);
    },
    true
  );
  document.addEventListener(
    "input",
    function (event) {
      if (event.target && event.target.id === "chat-input") {
        var max = limit();
        if (max === null || event.target.value.length <= max) clear();
      }
    },
    true
  );
})();

// The token usage under each answer and the chat's total under the last one. Chainlit has no
// footer slot per message, so the server sends them as actions (gemini_chat/actions.py), which
// Chainlit draws as buttons in the row of copy and thumbs; here they become small muted text.
(function () {
  "use strict";

  var LINES = 'button[id^="gemini-usage-"], button[id^="gemini-total-"]';
  var style = document.createElement("style");
  style.id = "gemini-chat-usage";
  style.textContent =
    LINES + "{cursor:default;font-size:12px;font-weight:400;height:auto;padding:0 6px;" +
    "font-variant-numeric:tabular-nums;opacity:1 !important;}" +
    LINES.replace(/"\]/g, '"]:hover') + "{background:transparent;}" +
    'button[id^="gemini-total-"]:not(:first-child){border-left:1px solid hsl(var(--border));border-radius:0;' +
    "padding-left:8px;margin-left:2px;}";
  document.head.appendChild(style);
})();

// The chat's download button in the header: public/chat-export.js.
(function () {
  "use strict";
  var script = document.createElement("script");
  script.src = "/public/chat-export.js";
  document.head.appendChild(script);
})();
