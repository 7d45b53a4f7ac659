//! Just enough XML for AWS's query protocol: the texts of the child elements of one
//! element, read with quick-xml's streaming reader. (Its serde layer would more than
//! double the component's XML code for the few fields STS answers with.)

use quick_xml::events::Event;
use quick_xml::Reader;

/// The texts of the elements directly inside the first element named `parent` (local
/// names, namespaces ignored; the first of repeated names wins). `None` for anything that
/// is not a complete, well-formed document containing such an element.
pub(crate) fn child_texts(xml: &str, parent: &str) -> Option<Children> {
    let mut reader = Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut children = Children::default();
    // The depth of the `parent` element while inside it; then whether it was closed.
    let mut parent_depth: Option<usize> = None;
    let mut complete = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(element) => {
                let name = String::from_utf8(element.local_name().as_ref().to_vec()).ok()?;
                if !complete && parent_depth.is_none() && name == parent {
                    parent_depth = Some(path.len());
                }
                path.push(name);
                text.clear();
            }
            Event::Empty(element) if parent_depth.is_some_and(|depth| depth + 1 == path.len()) => {
                let name = String::from_utf8(element.local_name().as_ref().to_vec()).ok()?;
                children.insert(name, String::new());
            }
            Event::Text(content) => text.push_str(&content.decode().ok()?),
            Event::CData(content) => text.push_str(&content.decode().ok()?),
            Event::GeneralRef(reference) => {
                let entity = format!("&{};", reference.decode().ok()?);
                text.push_str(&quick_xml::escape::unescape(&entity).ok()?);
            }
            Event::End(_) => {
                let name = path.pop()?;
                match parent_depth {
                    Some(depth) if path.len() == depth + 1 => {
                        children.insert(name, text.clone());
                    }
                    Some(depth) if path.len() == depth => {
                        parent_depth = None;
                        complete = true;
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (complete && path.is_empty()).then_some(children)
}

/// The child elements' texts by name. A handful per answer: a list, since a map type
/// would be one more copy of its code in the component.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Children(Vec<(String, String)>);

impl Children {
    /// Keeps the first text of a repeated name.
    fn insert(&mut self, name: String, text: String) {
        if !self.0.iter().any(|(known, _)| *known == name) {
            self.0.push((name, text));
        }
    }

    /// Takes the text of `name` out.
    pub(crate) fn remove(&mut self, name: &str) -> Option<String> {
        let index = self.0.iter().position(|(known, _)| known == name)?;
        Some(self.0.swap_remove(index).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_children_of_the_named_element() {
        let xml = r#"<?xml version="1.0"?><R xmlns="urn:x"><Other><Code>no</Code></Other>
            <Error><Type>Sender</Type><Code>A&amp;B</Code><Message><![CDATA[x < y]]> &#65;</Message><Empty/></Error>
            <Error><Code>second</Code></Error></R>"#;
        let mut children = child_texts(xml, "Error").unwrap();
        assert_eq!(children.remove("Code").unwrap(), "A&B");
        assert_eq!(children.remove("Type").unwrap(), "Sender");
        assert_eq!(children.remove("Message").unwrap(), "x < y A");
        assert_eq!(children.remove("Empty").unwrap(), "");
        assert_eq!(children.remove("Code"), None);
    }

    #[test]
    fn incomplete_or_broken_documents_are_none() {
        assert_eq!(
            child_texts("<R><Error><Code>x</Code></Error>", "Error"),
            None
        );
        assert_eq!(
            child_texts("<R><Error><Code>x</Code></Error></R>", "Missing"),
            None
        );
        assert_eq!(
            child_texts("<R><Error><Code>x</Cod></Error></R>", "Error"),
            None
        );
        assert_eq!(
            child_texts("<R><Error><Code>x&bogus;</Code></Error></R>", "Error"),
            None
        );
        assert_eq!(child_texts("", "Error"), None);
        assert_eq!(child_texts("not xml at all", "Error"), None);
        // Found by cargo fuzz: an empty element at the top level.
        assert_eq!(child_texts("<Error/>", "Error"), None);
        assert_eq!(child_texts("<a/>", "Error"), None);
    }
}
