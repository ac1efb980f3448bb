// A "Download this chat" button in the header of a stored chat (the page at /thread/<id>),
// opening a small menu with the chat as Markdown and as JSON. The files come from
// gemini_chat/sharing.py, for the chat's owner only; a shared chat's page (/share/<id>) shows
// no button, since its viewer is not the owner. Loaded by public/gemini-chat.js.
(function () {
  "use strict";

  var THREAD_PAGE = /^\/thread\/([0-9a-fA-F-]{36})\/?$/;
  var BUTTON_ID = "export-chat-button";
  var MENU_ID = "export-chat-menu";
  var SVG = "http://www.w3.org/2000/svg";
  var FORMATS = [
    { id: "export-chat-markdown", label: "Markdown (.md)", extension: "md" },
    { id: "export-chat-json", label: "JSON (.json)", extension: "json" },
  ];

  function rootPath() {
    var meta = document.querySelector('meta[property="og:root_path"]');
    return ((meta && meta.getAttribute("content")) || "").replace(/\/$/, "");
  }

  function shownThread() {
    var match = THREAD_PAGE.exec(window.location.pathname.slice(rootPath().length));
    return match ? match[1].toLowerCase() : null;
  }

  function downloadIcon() {
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "16");
    svg.setAttribute("height", "16");
    svg.setAttribute("fill", "none");
    svg.setAttribute("stroke", "currentColor");
    svg.setAttribute("stroke-width", "2");
    svg.setAttribute("stroke-linecap", "round");
    svg.setAttribute("stroke-linejoin", "round");
    svg.setAttribute("aria-hidden", "true");
    ["M21 15v4a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2v-4", "M7 10l5 5 5-5", "M12 15V3"].forEach(
      function (d) {
        var path = document.createElementNS(SVG, "path");
        path.setAttribute("d", d);
        svg.appendChild(path);
      }
    );
    return svg;
  }

  function closeMenu() {
    var menu = document.getElementById(MENU_ID);
    if (menu) menu.remove();
  }

  function openMenu(button) {
    closeMenu();
    var thread = button.getAttribute("data-thread");
    var menu = document.createElement("div");
    menu.id = MENU_ID;
    menu.setAttribute("role", "menu");
    var box = button.getBoundingClientRect();
    menu.style.cssText =
      "position:fixed;z-index:50;min-width:11rem;padding:0.25rem;border-radius:0.5rem;" +
      "border:1px solid hsl(var(--border));background:hsl(var(--popover));" +
      "color:hsl(var(--popover-foreground));box-shadow:0 4px 12px rgba(0,0,0,0.12);" +
      "top:" + (box.bottom + 6) + "px;right:" + Math.max(8, window.innerWidth - box.right) + "px";
    FORMATS.forEach(function (format) {
      var link = document.createElement("a");
      link.id = format.id;
      link.setAttribute("role", "menuitem");
      link.href = rootPath() + "/project/thread/" + thread + "/export." + format.extension;
      link.setAttribute("download", "");
      link.textContent = format.label;
      link.style.cssText =
        "display:block;padding:0.375rem 0.5rem;border-radius:0.25rem;font-size:0.875rem;" +
        "text-decoration:none;color:inherit";
      link.addEventListener("mouseenter", function () {
        link.style.background = "hsl(var(--accent))";
      });
      link.addEventListener("mouseleave", function () {
        link.style.background = "";
      });
      link.addEventListener("click", function () {
        window.setTimeout(closeMenu, 0);
      });
      menu.appendChild(link);
    });
    document.body.appendChild(menu);
  }

  function place() {
    var thread = shownThread();
    var existing = document.getElementById(BUTTON_ID);
    var header = document.getElementById("header");
    var actions = header && header.lastElementChild;
    if (!thread || !actions) {
      if (existing) existing.remove();
      closeMenu();
      return;
    }
    if (
      existing &&
      existing.parentElement === actions &&
      existing.getAttribute("data-thread") === thread
    ) {
      return;
    }
    if (existing) existing.remove();
    closeMenu();
    var button = document.createElement("button");
    button.id = BUTTON_ID;
    button.type = "button";
    button.title = "Download this chat";
    button.setAttribute("aria-label", "Download this chat");
    button.setAttribute("aria-haspopup", "menu");
    button.setAttribute("data-thread", thread);
    // Drawn like the header's other icon buttons (Chainlit's own classes).
    var sibling = actions.querySelector("button");
    if (sibling) button.className = sibling.className;
    button.appendChild(downloadIcon());
    button.addEventListener("click", function (event) {
      event.stopPropagation();
      if (document.getElementById(MENU_ID)) closeMenu();
      else openMenu(button);
    });
    actions.insertBefore(button, actions.firstChild);
  }

  document.addEventListener("click", function (event) {
    var menu = document.getElementById(MENU_ID);
    if (menu && !menu.contains(event.target)) closeMenu();
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") closeMenu();
  });

  function start() {
    place();
    // The header is drawn and redrawn by React, and the address changes without a reload.
    new MutationObserver(place).observe(document.body, { childList: true, subtree: true });
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
