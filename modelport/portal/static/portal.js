// modelport portal: the little behaviour the pages need, as one file (the Content-Security-Policy
// allows no inline script and no eval). Nothing here stores anything: no localStorage, no cookies.
(function () {
  "use strict";

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  }

  // Every htmx request carries the session's CSRF token.
  document.addEventListener("htmx:config:request", function (e) {
    var ctx = e.detail && e.detail.ctx;
    if (!ctx) return;
    ctx.request.headers["X-CSRF-Token"] = csrf();
    // The playground: the message was read into the request; empty the box for the next one.
    if (ctx.sourceElement && ctx.sourceElement.id === "chat-form") {
      var box = document.getElementById("message");
      if (box) setTimeout(function () { box.value = ""; box.focus(); }, 0);
    }
  });

  document.addEventListener("click", function (e) {
    var btn = e.target.closest("button.copy[data-copy]");
    if (!btn) return;
    var src = document.querySelector(btn.getAttribute("data-copy"));
    if (!src || !navigator.clipboard) return;
    navigator.clipboard.writeText(src.textContent.trim()).then(function () {
      btn.textContent = "Copied";
      setTimeout(function () { btn.textContent = "Copy"; }, 2000);
    });
  });

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.matches("form.confirm[data-confirm]") && !window.confirm(form.getAttribute("data-confirm"))) {
      e.preventDefault();
      return;
    }
    if (form.matches("form[data-upload]")) {
      e.preventDefault();
      upload(form);
    }
  });

  // Dataset upload: the file is the request body (as with the REST API), so the server validates
  // and encrypts it as it arrives; XMLHttpRequest reports upload progress, fetch() does not.
  function upload(form) {
    var file = form.querySelector('input[type="file"]').files[0];
    var out = document.getElementById("upload-result");
    var bar = document.getElementById("upload-progress");
    if (!file) return;
    var params = new URLSearchParams({ name: form.elements.name.value, format: form.elements.format.value });
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.getAttribute("data-upload") + "?" + params.toString());
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("X-CSRF-Token", csrf());
    xhr.setRequestHeader("HX-Request", "true");
    bar.hidden = false;
    bar.value = 0;
    xhr.upload.onprogress = function (ev) {
      if (ev.lengthComputable) bar.value = Math.round((ev.loaded / ev.total) * 100);
    };
    xhr.onload = function () {
      bar.value = 100;
      // The server's answer is an escaped HTML fragment (a result or the errors, per line).
      out.innerHTML = xhr.responseText;
      if (xhr.status < 300) form.reset();
    };
    xhr.onerror = function () {
      out.textContent = "The upload failed: the connection was lost. Try again.";
    };
    var submit = form.querySelector('button[type="submit"]');
    submit.disabled = true;
    xhr.onloadend = function () { submit.disabled = false; };
    xhr.send(file);
  }
})();
