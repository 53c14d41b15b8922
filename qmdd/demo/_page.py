"""The demo's one page: inline style and script, nothing fetched from elsewhere."""

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>qmdd: is it a deepfake?</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.5rem; margin-bottom: .25rem; }
  .hint { color: #666; font-size: .9rem; }
  form { margin: 1.25rem 0; padding: 1rem; border: 1px solid #ccc; border-radius: .5rem; display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; }
  button { font-size: 1rem; padding: .4rem 1.2rem; }
  #status { color: #555; }
  #error { color: #b00020; font-weight: 600; }
  #summary { font-size: 1.2rem; margin: 1rem 0 .25rem; }
  .verdict { font-weight: 700; padding: .1rem .5rem; border-radius: .3rem; color: white; }
  .verdict.fake { background: #c62828; } .verdict.real { background: #2e7d32; } .verdict.noface { background: #777; }
  #frames { display: grid; grid-template-columns: repeat(auto-fill, minmax(14rem, 1fr)); gap: .75rem; margin-top: 1rem; }
  figure { margin: 0; } figure img { width: 100%; border-radius: .3rem; }
  figcaption { font-size: .85rem; color: #444; }
</style>
</head>
<body>
<h1>Is it a deepfake?</h1>
<p class="hint">Model: <code>{{MODEL}}</code>. Upload a photo or a short video of a person (at most {{MAX_MB}} MB).
The face is found, cropped and scored; a video is judged on its sampled frames. Nothing leaves this computer.</p>
<form id="upload">
  <input type="file" id="file" name="file" accept="image/*,video/*,.mp4,.avi,.mov,.webm,.mkv,.m4v">
  <button type="submit" id="submit">Analyse</button>
  <span id="status"></span>
</form>
<div id="error" role="alert"></div>
<div id="result" hidden>
  <div id="summary">Verdict: <span id="verdict" class="verdict"></span> &nbsp; score <span id="score"></span>
    <span class="hint">(threshold <span id="threshold"></span>)</span></div>
  <div id="details" class="hint"></div>
  <div id="frames"></div>
</div>
<script>
const $ = (id) => document.getElementById(id);
const fmt = (x) => (x === null || x === undefined) ? "-" : Number(x).toFixed(3);
function show(data) {
  const verdict = $("verdict");
  verdict.textContent = data.verdict;
  verdict.className = "verdict " + data.verdict.replace(" ", "");
  $("score").textContent = fmt(data.score);
  $("threshold").textContent = fmt(data.threshold);
  let details = data.kind === "video"
    ? `${data.note}; ${data.share_above === null ? "-" : Math.round(100 * data.share_above) + " %"} of face frames above the threshold (rule: ${data.rule}); score = mean face score.`
    : (data.note || "face found and scored");
  $("details").textContent = details;
  const frames = $("frames");
  frames.replaceChildren();
  for (const f of data.frames) {
    const fig = document.createElement("figure");
    fig.className = "frame";
    const img = document.createElement("img");
    img.src = f.image;
    img.alt = "frame " + f.index;
    const cap = document.createElement("figcaption");
    const when = f.time === null ? "" : ` at ${Number(f.time).toFixed(2)} s`;
    cap.textContent = data.kind === "video"
      ? `frame ${f.index}${when}: ` + (f.box ? `score ${fmt(f.score)}` : "no face")
      : `score ${fmt(f.score)}`;
    fig.append(img, cap);
    frames.append(fig);
  }
  $("result").hidden = false;
}
$("upload").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").textContent = "";
  $("result").hidden = true;
  const file = $("file").files[0];
  if (!file) { $("error").textContent = "Choose an image or a video first."; return; }
  const body = new FormData();
  body.append("file", file);
  $("status").textContent = "analysing " + file.name + " ...";
  $("submit").disabled = true;
  try {
    const response = await fetch("/api/analyse", { method: "POST", body });
    let data;
    try { data = await response.json(); } catch (e) { data = { error: `the server answered ${response.status} ${response.statusText}` }; }
    if (!response.ok || data.error) { $("error").textContent = data.error || `the server answered ${response.status}`; }
    else { show(data); }
  } catch (e) {
    $("error").textContent = "The demo server cannot be reached: is python -m qmdd.demo still running?";
  } finally {
    $("status").textContent = "";
    $("submit").disabled = false;
  }
});
</script>
</body>
</html>
"""
