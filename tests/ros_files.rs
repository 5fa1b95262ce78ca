//! Static checks of the files a robot integrator uses (there is no
//! `ros2 launch` here): config/params.yaml, the Python and XML launch files
//! and the RViz configuration parse, and the parameters they name are exactly
//! the node's. No middleware needed; Python (the project venv) reads the
//! Python, XML and RViz files with its own parsers.

mod ros_common;
use ros_common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

/// The launch arguments both launch files must declare.
const LAUNCH_ARGUMENTS: [&str; 4] = ["camera", "namespace", "params_file", "rviz"];
/// The topics the RViz configuration must show as images.
const RVIZ_IMAGE_TOPICS: [&str; 3] = ["annotated_image", "saliency/emotion", "saliency/gender"];

/// Reads the launch files and the RViz file with Python's own parsers
/// (ast, xml.etree, yaml) and prints what the checks need as JSON.
const INSPECT_PY: &str = r#"
import ast, json, sys, xml.etree.ElementTree as ET
import yaml

launch_py, launch_xml, rviz = sys.argv[1:4]
out = {}

tree = ast.parse(open(launch_py).read(), launch_py)
def call_name(call):
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
args, nodes = [], []
for n in ast.walk(tree):
    if isinstance(n, ast.Call) and call_name(n) == 'DeclareLaunchArgument':
        if n.args and isinstance(n.args[0], ast.Constant):
            args.append(n.args[0].value)
    if isinstance(n, ast.Call) and call_name(n) == 'Node':
        kw = {k.arg: k.value for k in n.keywords}
        def const(name):
            v = kw.get(name)
            return v.value if isinstance(v, ast.Constant) else None
        params = kw.get('parameters')
        entries = [ast.dump(e) for e in params.elts] if isinstance(params, (ast.List, ast.Tuple)) else None
        remap_from = []
        if isinstance(kw.get('remappings'), (ast.List, ast.Tuple)):
            for pair in kw['remappings'].elts:
                if isinstance(pair, ast.Tuple) and isinstance(pair.elts[0], ast.Constant):
                    remap_from.append(pair.elts[0].value)
        def dumped(name):
            v = kw.get(name)
            return ast.dump(v) if v is not None else None
        nodes.append({
            'package': const('package'), 'executable': const('executable'), 'name': const('name'),
            'namespace': dumped('namespace'), 'arguments': dumped('arguments'),
            'condition': dumped('condition'),
            'parameters': entries,
            # every entry of parameters=[...] is the params_file launch configuration
            'parameters_only_file': entries is not None and all(
                isinstance(e, ast.Name) and e.id == 'params_file' for e in params.elts),
            'remap_from': remap_from,
        })
out['launch_py'] = {'arguments': args, 'nodes': nodes}

root = ET.parse(launch_xml).getroot()
xml_nodes = []
for node in root.iter('node'):
    params = [p.attrib for p in node.iter('param')]
    xml_nodes.append({
        'package': node.get('pkg'), 'executable': node.get('exec'), 'name': node.get('name'),
        'namespace': node.get('namespace'), 'args': node.get('args'), 'if': node.get('if'),
        'params': params,
        'remap_from': [r.get('from') for r in node.iter('remap')],
    })
out['launch_xml'] = {'root': root.tag, 'arguments': [a.get('name') for a in root.iter('arg')], 'nodes': xml_nodes}

config = yaml.safe_load(open(rviz))
images = []
def walk(displays):
    for d in displays or []:
        if d.get('Class') == 'rviz_default_plugins/Image':
            topic = d.get('Topic')
            images.append(topic.get('Value') if isinstance(topic, dict) else topic)
        walk(d.get('Displays'))
walk(config.get('Visualization Manager', {}).get('Displays'))
out['rviz'] = {'image_topics': images}
print(json.dumps(out))
"#;

fn inspect() -> Value {
    let python = repo_path(".cache/venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `make setup`",
        python.display()
    );
    let output = Command::new(&python)
        .arg("-c")
        .arg(INSPECT_PY)
        .arg(repo_path("launch/face_perception.launch.py"))
        .arg(repo_path("launch/face_perception.launch.xml"))
        .arg(repo_path("config/face_perception.rviz"))
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "the files do not parse:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("inspection JSON")
}

/// The one node of `package` among a launch file's nodes.
fn node_of<'a>(nodes: &'a [Value], package: &str) -> &'a Value {
    let matching: Vec<&Value> = nodes.iter().filter(|n| n["package"] == package).collect();
    assert_eq!(matching.len(), 1, "nodes of package {package}: {nodes:?}");
    matching[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn params_yaml_parses_and_names_exactly_the_declared_parameters() {
    let text =
        std::fs::read_to_string(repo_path("config/params.yaml")).expect("config/params.yaml");
    assert!(
        text.lines().any(|l| l.trim_end() == "/**:"),
        "params.yaml should apply to the node under any name and namespace"
    );
    let entries = params_file_entries(&text).expect("config/params.yaml parses");
    let in_file: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    let unique: BTreeSet<&str> = in_file.iter().copied().collect();
    assert_eq!(
        unique.len(),
        in_file.len(),
        "a parameter appears twice: {in_file:?}"
    );
    let declared = declared_parameter_names();
    let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
    assert_eq!(
        declared.len(),
        26,
        "DESCRIPTIONS in params.rs read: {declared:?}"
    );
    let missing: Vec<_> = declared.difference(&unique).collect();
    let unknown: Vec<_> = unique.difference(&declared).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "params.yaml lacks {missing:?} and has unknown {unknown:?}"
    );
}

#[test]
fn python_launch_file_declares_the_arguments_and_sets_parameters_only_from_the_file() {
    let info = inspect();
    let launch = &info["launch_py"];
    let arguments: BTreeSet<String> = strings(&launch["arguments"]).into_iter().collect();
    for arg in LAUNCH_ARGUMENTS {
        assert!(
            arguments.contains(arg),
            "launch.py does not declare {arg}: {arguments:?}"
        );
    }
    let nodes = launch["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "the node and RViz: {nodes:?}");
    let node = node_of(nodes, "face_perception");
    assert_eq!(node["executable"], "face_perception_node");
    assert_eq!(node["name"], "face_perception");
    let rviz = node_of(nodes, "rviz2");
    assert_eq!(rviz["executable"], "rviz2");
    let dumped = |key: &str| rviz[key].as_str().unwrap_or_default().to_string();
    assert!(
        dumped("condition").contains("IfCondition") && dumped("condition").contains("'rviz'"),
        "RViz must start only with rviz:=true: {rviz}"
    );
    assert!(
        dumped("namespace").contains("id='namespace'"),
        "RViz must share the node's namespace: {rviz}"
    );
    assert!(
        dumped("arguments").contains("'-d'")
            && dumped("arguments").contains("face_perception.rviz"),
        "RViz must load config/face_perception.rviz: {rviz}"
    );
    assert_eq!(
        node["parameters_only_file"], true,
        "parameters other than params_file: {:?}",
        node["parameters"]
    );
    let remapped = strings(&node["remap_from"]);
    assert!(
        remapped.contains(&"image".to_string())
            && remapped.contains(&"image/compressed".to_string()),
        "{remapped:?}"
    );
}

#[test]
fn xml_launch_file_declares_the_same_arguments_and_sets_parameters_only_from_the_file() {
    let info = inspect();
    let launch = &info["launch_xml"];
    assert_eq!(launch["root"], "launch");
    let arguments: BTreeSet<String> = strings(&launch["arguments"]).into_iter().collect();
    let expected: BTreeSet<String> = LAUNCH_ARGUMENTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(arguments, expected, "launch.xml arguments");
    let py_arguments: BTreeSet<String> = strings(&info["launch_py"]["arguments"])
        .into_iter()
        .collect();
    assert_eq!(
        arguments, py_arguments,
        "the two launch files declare different arguments"
    );
    let nodes = launch["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "the node and RViz: {nodes:?}");
    let node = node_of(nodes, "face_perception");
    assert_eq!(node["executable"], "face_perception_node");
    assert_eq!(node["name"], "face_perception");
    let rviz = node_of(nodes, "rviz2");
    assert_eq!(rviz["executable"], "rviz2");
    assert_eq!(
        rviz["if"], "$(var rviz)",
        "RViz must start only with rviz:=true"
    );
    assert_eq!(
        rviz["namespace"], "$(var namespace)",
        "RViz must share the node's namespace"
    );
    assert!(
        rviz["args"]
            .as_str()
            .is_some_and(|a| a.starts_with("-d ") && a.ends_with("/config/face_perception.rviz")),
        "RViz must load config/face_perception.rviz: {rviz}"
    );
    let params = node["params"].as_array().expect("params");
    assert!(!params.is_empty(), "no <param from=...>");
    for p in params {
        assert!(
            p.get("from")
                .is_some_and(|f| f.as_str().is_some_and(|f| f.contains("params_file"))),
            "{p}: only the params file"
        );
        assert!(
            p.get("name").is_none(),
            "{p}: a parameter set in the launch file, not in params.yaml"
        );
    }
    let remapped = strings(&node["remap_from"]);
    assert!(
        remapped.contains(&"image".to_string())
            && remapped.contains(&"image/compressed".to_string()),
        "{remapped:?}"
    );
}

#[test]
fn rviz_config_shows_the_annotated_and_saliency_images() {
    let info = inspect();
    let topics = strings(&info["rviz"]["image_topics"]);
    // Relative names: RViz, launched in the node's namespace, resolves them
    // to the node's topics in any namespace.
    for wanted in RVIZ_IMAGE_TOPICS {
        assert!(
            topics.iter().any(|t| t == wanted),
            "no Image display for the relative topic {wanted}: {topics:?}"
        );
    }
}
