(function(){
"use strict";
// The report's charts, drawn by uPlot (inlined before this script) from the page's JSON.
// Every chart shares one time axis: the same x range, a synced cursor, and a drag on any
// chart zooms all of them and the timeline table below. Text from the capture reaches the
// page only as canvas text or text nodes (uPlot's legend sets nodeValue), never as markup.
var page=JSON.parse(document.getElementById("timeline-data").textContent), D=page.charts;
if(!D||typeof uPlot==="undefined")return;
var charts=[], sync=uPlot.sync("correlate"), cur=null;
var SEV={critical:"#7f0000",error:"#d62728",warning:"#e69500",info:"#3b82f6"};
var PALETTE=["#1f77b4","#d62728","#2ca02c","#9467bd","#ff7f0e","#17becf","#8c564b","#e377c2"];
function width(){var m=document.querySelector("main");return Math.max(480,(m?m.clientWidth:1000)-40);}
function utc(ts){return uPlot.tzDate(new Date(ts*1e3),"Etc/UTC");}
function fmt(v){if(v==null)return "-";return v>=1000?(v/1000).toFixed(3)+" s":v>=1?v.toFixed(2)+" ms":(v*1000).toFixed(1)+" us";}
function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;if(text!=null)e.textContent=text;return e;}
function clip(u,a,b){var l=u.bbox.left,r=l+u.bbox.width;return [Math.max(a,l),Math.min(b,r)];}
// Finding markers (dashed line, coloured by severity) and "did not answer" bands, placed with
// the chart's own scale (valToPos); how many fell inside the plot is kept on the chart's box.
function overlay(box,marks,bands){
  return {hooks:{
    drawClear:[function(u){
      var ctx=u.ctx,n=0;ctx.save();ctx.fillStyle="rgba(214,39,40,.16)";
      (bands||[]).forEach(function(b){var p=clip(u,u.valToPos(b[0],"x",true),u.valToPos(b[1],"x",true));
        if(p[1]>=p[0]){ctx.fillRect(p[0],u.bbox.top,Math.max(2,p[1]-p[0]),u.bbox.height);n++;}});
      ctx.restore();box.setAttribute("data-bands-drawn",n);}],
    draw:[function(u){
      var ctx=u.ctx,n=0;ctx.save();ctx.lineWidth=Math.max(1,devicePixelRatio);ctx.setLineDash([5,3]);
      (marks||[]).forEach(function(m){var x=u.valToPos(m[0],"x",true);
        if(x<u.bbox.left-1||x>u.bbox.left+u.bbox.width+1)return;
        ctx.strokeStyle=SEV[m[1]]||"#555";ctx.beginPath();ctx.moveTo(x,u.bbox.top);ctx.lineTo(x,u.bbox.top+u.bbox.height);ctx.stroke();
        ctx.fillStyle=SEV[m[1]]||"#555";ctx.beginPath();ctx.moveTo(x-5,u.bbox.top);ctx.lineTo(x+5,u.bbox.top);ctx.lineTo(x,u.bbox.top+8);ctx.fill();n++;});
      ctx.restore();box.setAttribute("data-marks-drawn",n);}]
  }};
}
// A drag selects a time range: every chart zooms to it and the timeline table follows.
function scaleAll(lo,hi){
  cur=lo===D.x0&&hi===D.x1?null:[lo,hi];
  charts.forEach(function(u){u.setScale("x",{min:lo,max:hi});});
}
function zoomAll(lo,hi){
  scaleAll(lo,hi);
  window.dispatchEvent(new CustomEvent("correlate:zoom",{detail:lo===D.x0&&hi===D.x1?null:
    [Math.max(0,(lo-D.t0_s)*1e9),Math.max(0,(hi-D.t0_s)*1e9)]}));
}
function base(box,title,height,series,extra){
  var opts={width:width(),height:height,tzDate:utc,series:[{label:"time (UTC)"}].concat(series),
    // every chart spans the page's range (or the current zoom), not its own data's
    scales:{x:{time:true,range:function(){return cur||[D.x0,D.x1];}}},
    cursor:{sync:{key:sync.key},drag:{x:true,y:false,setScale:false}},
    legend:{live:true},plugins:[],
    hooks:{setScale:[function(u,key){if(key==="x")u.root.parentNode.setAttribute("data-x-range",
      u.scales.x.min.toFixed(6)+".."+u.scales.x.max.toFixed(6));}],
    setSelect:[function(u){if(u.select.width<4)return;
      var lo=u.posToVal(u.select.left,"x"),hi=u.posToVal(u.select.left+u.select.width,"x");
      u.setSelect({left:0,width:0,top:0,height:0},false);zoomAll(lo,hi);}]}};
  for(var k in extra)opts[k]=extra[k];
  box.appendChild(el("h3",null,title));
  return opts;
}
function mount(box,opts,data,parent){
  var u=new uPlot(opts,data,box);charts.push(u);
  if(cur)u.setScale("x",{min:cur[0],max:cur[1]});
  box.setAttribute("data-series",opts.series.length-1);
  box.addEventListener("dblclick",function(){zoomAll(D.x0,D.x1);});
  (parent||box).setAttribute("data-ready","1");
  return u;
}
function markList(box,marks,bands){
  if(!(marks&&marks.length)&&!(bands&&bands.length))return;
  var ul=el("ul","marks");
  (bands||[]).forEach(function(b){ul.appendChild(el("li","band",b[2]+": "+utc(b[0]).toISOString().slice(11,23)+" .. "+utc(b[1]).toISOString().slice(11,23)+" UTC"));});
  (marks||[]).forEach(function(m){var li=el("li","mark sev-"+m[1],utc(m[0]).toISOString().slice(11,23)+" UTC "+m[2]);li.style.borderColor=SEV[m[1]]||"#555";ul.appendChild(li);});
  box.appendChild(ul);
}
function latency(root){
  D.bricks.forEach(function(b){
    var box=el("div","chart latency");box.setAttribute("data-server",b.server);root.appendChild(box);
    function pts(lbl){return function(u,v,si,i){return v==null?"-":fmt(v)+" "+(b.label[i]||"");};}
    // 0 marks a row a line skips (it holds another series' point): undefined to uPlot, while
    // null breaks the line (no line is drawn across a silence).
    function line(a){return a.map(function(v){return v===0?undefined:v;});}
    var series=[
      {label:"typical",stroke:"#1f77b4",width:1.5,value:function(u,v){return fmt(v);}},
      {label:"min",stroke:"rgba(31,119,180,.35)",width:1,value:function(u,v){return fmt(v);},points:{show:false}},
      {label:"max",stroke:"rgba(31,119,180,.35)",width:1,value:function(u,v){return fmt(v);},points:{show:false}},
      {label:"slowest calls",stroke:"#ff7f0e",fill:"#ff7f0e",paths:function(){return null;},points:{show:true,size:5,fill:"#ff7f0e"},value:pts()},
      {label:"finding evidence",stroke:"#d62728",fill:"#d62728",paths:function(){return null;},points:{show:true,size:8,fill:"#d62728"},value:pts()}];
    var opts=base(box,b.name+" \u00b7 "+b.calls+" replies",190,series,
      {bands:[{series:[3,2],fill:"rgba(31,119,180,.12)"}],
       axes:[{},{label:"latency",values:function(u,s){return s.map(fmt);},size:70}]});
    opts.scales.y={distr:3};
    opts.plugins.push(overlay(box,b.marks,b.bands));
    mount(box,opts,[b.x,line(b.typ),line(b.min),line(b.max),b.slow,b.ev]);
    markList(box,b.marks,b.bands);
  });
}
function peers(root){
  D.peers.forEach(function(s){
    var box=el("div","chart peers");root.appendChild(box);
    var sel=el("select");s.procedures.forEach(function(p){var o=el("option",null,p);o.value=p;sel.appendChild(o);});
    var holder=el("div"),u=null;
    function draw(proc){
      var c=s.charts[proc];if(!c)return;
      if(u){charts.splice(charts.indexOf(u),1);u.destroy();}
      holder.textContent="";
      function line(a){return a.map(function(v){return v===0?undefined:v;});}
      var series=c.series.map(function(m,i){return {label:m.name,stroke:PALETTE[i%PALETTE.length],width:1.5,value:function(u,v){return fmt(v);}};});
      var opts=base(holder,proc+" on each brick of "+s.title+" (typical latency per time bucket)",220,series,
        {axes:[{},{label:"latency",values:function(u,v){return v.map(fmt);},size:70}]});
      opts.scales.y={distr:3};opts.plugins.push(overlay(holder,s.marks,[]));
      u=mount(holder,opts,[c.x].concat(c.series.map(function(m){return line(m.typ);})),box);
      box.setAttribute("data-series",c.series.length);
    }
    var lab=el("label",null,"procedure ");lab.appendChild(sel);box.appendChild(lab);box.appendChild(holder);
    sel.addEventListener("change",function(){draw(sel.value);});
    if(s.procedures.length)draw(s.procedures[0]);
  });
}
function locks(root){
  var L=D.locks;if(!L.lanes.length)return;
  var box=el("div","chart locks");root.appendChild(box);
  var tip=el("div","tip","");
  var bars={hooks:{draw:[function(u){
    var ctx=u.ctx,n=0,h=Math.max(3,(u.valToPos(0,"y",true)-u.valToPos(1,"y",true))*0.36);ctx.save();
    L.spans.forEach(function(s){var p=clip(u,u.valToPos(s[1],"x",true),u.valToPos(s[2],"x",true));if(p[1]<p[0])return;
      var y=u.valToPos(s[0],"y",true);ctx.fillStyle=s[3]==="wait"?"rgba(230,149,0,.85)":"rgba(31,119,180,.55)";
      ctx.fillRect(p[0],s[3]==="wait"?y-h:y,Math.max(2,p[1]-p[0]),h);n++;});
    ctx.restore();box.setAttribute("data-spans-drawn",n);}],
    setCursor:[function(u){var x=u.posToVal(u.cursor.left,"x"),y=Math.round(u.posToVal(u.cursor.top,"y")),hit=null;
      if(u.cursor.left<0){tip.textContent="";return;}
      L.spans.forEach(function(s){if(s[0]===y&&s[1]<=x&&x<=s[2]&&(!hit||s[2]-s[1]<hit[2]-hit[1]))hit=s;});
      tip.textContent=hit?L.lanes[hit[0]]+": "+hit[4]:"";}]}};
  var opts=base(box,"Lock waits (orange, upper half) and holds (blue, lower half) per client",70+26*L.lanes.length,
    [{label:"lock",show:false}],
    {legend:{show:false},axes:[{},{size:260,splits:function(){return L.lanes.map(function(_,i){return i;});},
      values:function(u,s){return s.map(function(v){var t=L.lanes[v]||"";return t.length>40?t.slice(0,39)+"\u2026":t;});}}]});
  opts.scales.y={auto:false,range:[-0.7,L.lanes.length-0.3]};
  opts.plugins.push(bars,overlay(box,L.marks,[]));
  mount(box,opts,[[D.x0,D.x1],[null,null]]);
  box.setAttribute("data-lanes",L.lanes.length);
  box.appendChild(tip);markList(box,L.marks,[]);
}
[["charts-latency",latency],["charts-peers",peers],["charts-locks",locks]].forEach(function(p){
  var root=document.getElementById(p[0]);if(root)p[1](root);});
// The timeline's own zoom (its strip, the address) moves the charts too: ns since its first event.
// Queued after the charts' own first commit (uPlot commits in a microtask), which would
// otherwise reset the range given while the page loads.
window.addEventListener("correlate:range",function(e){var z=e.detail;queueMicrotask(function(){
  if(z)scaleAll(D.t0_s+z[0]/1e9,D.t0_s+z[1]/1e9);else if(cur)scaleAll(D.x0,D.x1);});});
window.addEventListener("resize",function(){charts.forEach(function(u){u.setSize({width:width(),height:u.height});});});
document.body.setAttribute("data-charts",charts.length);
})();
