(function(){
"use strict";
// Rows are built when first shown and at most `limit` matching rows are in the page at once
// ("Show more" adds a page), so a 50,000-event report stays responsive.
var data=JSON.parse(document.getElementById("timeline-data").textContent);
var rows=data.rows, t0=data.t0, PAGE=2000, limit=PAGE, matching=[];
var tbody=document.getElementById("rows"), canvas=document.getElementById("overview");
var q=document.getElementById("q"), hostSel=document.getElementById("host"), more=document.getElementById("more");
var zoom=null, byId={}, drag=null;
var COLORS={wire:"#1f77b4",probe:"#9467bd",log:"#b8860b",finding:"#d62728"};
var LANES=["finding","wire","probe","log"];
rows.forEach(function(r){r.hay=(r.kind+" "+r.host+" "+r.source+" "+r.text).toLowerCase();byId[r.id]=r;});
function fmtRel(ns){return "+"+(ns/1e9).toFixed(6)+"s";}
function cell(tr,text,cls){var td=document.createElement("td");td.textContent=text;if(cls)td.className=cls;tr.appendChild(td);}
function rowOf(r){
  if(r.tr)return r.tr;
  var tr=document.createElement("tr");tr.id=r.id;tr.className=r.layer;
  cell(tr,r.time);cell(tr,fmtRel(r.t-t0));
  var td=document.createElement("td"),b=document.createElement("span");b.className="badge "+r.layer;
  b.textContent=r.layer;td.appendChild(b);tr.appendChild(td);
  cell(tr,r.kind);cell(tr,r.host||r.source);cell(tr,r.text,"text");
  tr.addEventListener("click",function(){r.open=!r.open;render();});
  return r.tr=tr;
}
// The event's JSON is compact in the page; shown indented by its text, not parsed: a parse
// would round integers above 2**53 (inode numbers) and fail on a cut one.
function indent(json){
  var out="",depth=0,inStr=false,esc=false,pad=function(){return "\n"+" ".repeat(depth);};
  for(var i=0;i<json.length;i++){var ch=json[i];
    if(inStr){out+=ch;if(esc)esc=false;else if(ch==="\\")esc=true;else if(ch==='"')inStr=false;continue;}
    if(ch==='"'){inStr=true;out+=ch;}
    else if(ch==="{"||ch==="["){depth++;out+=ch+pad();}
    else if(ch==="}"||ch==="]"){depth=Math.max(0,depth-1);out+=pad()+ch;}
    else if(ch===","){out+=ch+pad();}
    else if(ch===":"){out+=": ";}
    else out+=ch;}
  return out;
}
function detailOf(r){
  if(r.dt)return r.dt;
  var d=document.createElement("tr"),td=document.createElement("td");d.className="detail";
  td.colSpan=6;td.textContent=indent(r.detail);d.appendChild(td);return r.dt=d;
}
function layersOn(){var on={};document.querySelectorAll("input.layer").forEach(function(c){on[c.value]=c.checked;});return on;}
function visible(r,on,text,host){
  if(on[r.layer]===false)return false;
  if(host&&r.host!==host)return false;
  if(zoom&&(r.t<zoom[0]||r.t>zoom[1]))return false;
  if(text&&r.hay.indexOf(text)<0)return false;
  return true;
}
function render(){
  var frag=document.createDocumentFragment(),n=Math.min(limit,matching.length);
  for(var i=0;i<n;i++){var r=matching[i];frag.appendChild(rowOf(r));if(r.open)frag.appendChild(detailOf(r));}
  tbody.textContent="";tbody.appendChild(frag);
  more.style.display=matching.length>n?"":"none";
  more.textContent="Show "+Math.min(PAGE,matching.length-n)+" more of "+(matching.length-n)+" not shown";
  document.getElementById("shown").textContent=matching.length+" of "+rows.length+" events shown"+
    (matching.length>n?" (first "+n+" in the table)":"");
}
function apply(){
  var on=layersOn(),text=q.value.trim().toLowerCase(),host=hostSel.value;
  matching=rows.filter(function(r){return visible(r,on,text,host);});
  limit=PAGE;render();
  var lo=zoom?zoom[0]:data.t0,hi=zoom?zoom[1]:data.t1;
  window.dispatchEvent(new CustomEvent("correlate:range",{detail:zoom}));   // the charts follow
  document.getElementById("range").textContent="Range: "+fmtRel(lo-t0)+" .. "+fmtRel(hi-t0)+(zoom?" (zoomed: drag again or Reset)":" (drag over the strip to zoom)");
  draw();
}
function draw(){
  var w=canvas.clientWidth||800,h=canvas.clientHeight||70;canvas.width=w;canvas.height=h;
  var ctx=canvas.getContext("2d");ctx.clearRect(0,0,w,h);
  var lo=zoom?zoom[0]:data.t0,hi=zoom?zoom[1]:data.t1,s=Math.max(1,hi-lo),lh=h/LANES.length;
  ctx.font="10px sans-serif";
  LANES.forEach(function(l,i){ctx.fillStyle="#999";ctx.fillText(l,2,i*lh+10);});
  rows.forEach(function(r){if(r.t<lo||r.t>hi)return;var x=(r.t-lo)/s*(w-50)+48,i=LANES.indexOf(r.layer);if(i<0)i=3;
    ctx.fillStyle=COLORS[r.layer]||"#555";ctx.fillRect(x,i*lh+2,r.layer==="finding"?3:1.5,lh-4);});
  if(drag){ctx.fillStyle="rgba(0,0,0,.15)";ctx.fillRect(Math.min(drag[0],drag[1]),0,Math.abs(drag[1]-drag[0]),h);}
}
function xToT(x){var lo=zoom?zoom[0]:data.t0,hi=zoom?zoom[1]:data.t1,w=canvas.clientWidth||800;
  return lo+Math.max(0,Math.min(1,(x-48)/(w-50)))*(hi-lo);}
canvas.addEventListener("mousedown",function(e){drag=[e.offsetX,e.offsetX];});
canvas.addEventListener("mousemove",function(e){if(drag){drag[1]=e.offsetX;draw();}});
window.addEventListener("mouseup",function(){if(!drag)return;var a=Math.min(drag[0],drag[1]),b=Math.max(drag[0],drag[1]);
  drag=null;if(b-a>3)zoom=[xToT(a),xToT(b)];apply();});
function resetFilters(){zoom=null;q.value="";hostSel.value="";
  document.querySelectorAll("input.layer").forEach(function(c){c.checked=true;});}
document.getElementById("reset").addEventListener("click",function(){resetFilters();apply();});
document.querySelectorAll("input.layer").forEach(function(c){c.addEventListener("change",apply);});
q.addEventListener("input",apply);hostSel.addEventListener("change",apply);
more.addEventListener("click",function(){limit+=PAGE;render();});
function reveal(id){
  var r=byId[id];if(!r)return;
  var i=matching.indexOf(r);
  if(i<0){resetFilters();apply();i=matching.indexOf(r);}
  if(i>=limit){limit=i+PAGE;render();}
  document.querySelectorAll("tr.hl").forEach(function(t){t.classList.remove("hl");});
  rowOf(r).classList.add("hl");r.tr.scrollIntoView({block:"center"});
}
document.querySelectorAll("a.ev").forEach(function(a){a.addEventListener("click",function(e){
  e.preventDefault();history.replaceState(null,"","#"+a.getAttribute("data-target"));reveal(a.getAttribute("data-target"));});});
// The view can be given in the address: #e12 shows event 12; #q=TEXT&layers=wire,log&host=H&from=NS&to=NS
// (ns since the first event) opens a filtered view that can be shared.
function fromHash(){
  var h=decodeURIComponent(location.hash.slice(1));
  if(/^e\d+$/.test(h)){apply();reveal(h);return;}
  var p={};h.split("&").forEach(function(kv){var i=kv.indexOf("=");if(i>0)p[kv.slice(0,i)]=kv.slice(i+1);});
  if(p.q!==undefined)q.value=p.q;
  if(p.host!==undefined)hostSel.value=p.host;
  if(p.layers!==undefined){var on=p.layers.split(",");document.querySelectorAll("input.layer").forEach(function(c){c.checked=on.indexOf(c.value)>=0;});}
  if(p.from!==undefined||p.to!==undefined){var a=Number(p.from||data.t0),b=Number(p.to||data.t1);if(!isNaN(a)&&!isNaN(b)&&b>=a)zoom=[a,b];}
  apply();
}
window.addEventListener("hashchange",fromHash);
// A time range selected on a chart (ns since the first event; null: zoomed out).
window.addEventListener("correlate:zoom",function(e){zoom=e.detail;apply();});
window.addEventListener("resize",draw);
fromHash();
})();
