// The console's only script: Ctrl+Enter (or Cmd+Enter) in the editor previews the draft.
document.addEventListener("keydown", function (event) {
  if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && event.target.tagName === "TEXTAREA") {
    var button = document.getElementById("preview");
    if (button) { event.preventDefault(); button.click(); }
  }
});
