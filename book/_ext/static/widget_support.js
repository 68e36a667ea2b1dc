/* vaebook: what the vendored ipywidgets HTML manager (@jupyter-widgets/html-manager 1.0.15) needs on this site.
 * Loaded on pages with widgets only, before require.js and the manager (book/_ext/offline_assets.py).
 *
 * 1. Its fonts. The manager finds its font files relative to the URL of its AMD module
 *    "@jupyter-widgets/html-manager/dist/libembed-amd", which require.js would place beside the page
 *    (book/@jupyter-widgets/html-manager/dist/...: every font request failed). require.js reads a global
 *    `require` object as its configuration when it loads; its `paths` maps that module to _static/vendor/html-manager,
 *    where the fonts are.
 * 2. MathJax. The manager typesets widget labels with the MathJax 2 API,
 *        if (window.MathJax !== undefined) MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]);
 *    MathJax 3 has no Hub, so every widget threw "Cannot read properties of undefined (reading 'Queue')". Whatever
 *    object window.MathJax holds -- the configuration before MathJax 3 has loaded, MathJax itself after (MathJax 3
 *    replaces window.MathJax when it starts) -- gets a non-enumerable Hub whose Queue typesets the element with
 *    MathJax 3's typesetPromise. Before MathJax has loaded there is nothing to call, and nothing is lost: MathJax
 *    typesets the whole page when it starts.
 * Both are checked by tests/test_site.py (no JavaScript error, no failed request, on every chapter).
 */
(function () {
  "use strict";

  // 1. require.js configuration (only if nothing configured require.js before us)
  var script = document.currentScript;
  if (script && typeof window.require === "undefined") {
    var here = new URL(script.src, document.baseURI);
    var vendor = new URL("vendor/html-manager", here).href;  // a sibling of this file in _static
    window.require = {paths: {"@jupyter-widgets/html-manager/dist": vendor}};
  }

  // 2. MathJax 2's Hub.Queue on top of MathJax 3
  function queue() {
    for (var i = 0; i < arguments.length; i++) {
      var job = arguments[i];
      var element = Array.isArray(job) ? job[2] : null;
      var mj = window.MathJax;
      if (element && mj && typeof mj.typesetPromise === "function") {
        mj.typesetPromise([element]).catch(function (err) { console.warn("MathJax typesetting failed:", err); });
      }
    }
  }
  function withHub(mj) {
    if (mj && typeof mj === "object" && !mj.Hub) {
      Object.defineProperty(mj, "Hub", {value: {Queue: queue}, enumerable: false, configurable: true,
                                        writable: true});
    }
    return mj;
  }
  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true, enumerable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); }
  });
})();
